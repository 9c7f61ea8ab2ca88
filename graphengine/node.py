"""The node contract: a node is a small pydantic class with typed inputs, declared outputs and one `execute`."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from .spec import BooleanInput, FloatInput, InputSpec, IntInput, Output, StringInput

if TYPE_CHECKING:
    from .admission import Estimate
    from .context import ExecutionContext


@dataclass
class NodeOutput:
    """What `execute` may return instead of a plain tuple: output values plus UI data (images, text…).

    `expand` is an API-format graph run in place of the node (ComfyUI's node expansion); a value that is a link
    `[node_id, slot]` into that graph stands for that node's output."""

    values: tuple[Any, ...] = ()
    ui: dict[str, Any] | None = None
    expand: dict[str, Any] | None = None


@dataclass(frozen=True)
class ExecutionBlocker:
    """An output value that stops every node it reaches from running; with a message the block is reported as an
    `execution_error` (type ExecutionBlocked) while the prompt goes on."""

    message: str | None = None


class Node(BaseModel):
    """Base class of every node. Subclasses declare inputs as annotated fields and implement `execute`."""

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=(), extra="forbid")

    NAME: ClassVar[str | None] = None
    DISPLAY_NAME: ClassVar[str | None] = None
    CATEGORY: ClassVar[str] = "sd"
    DESCRIPTION: ClassVar[str | None] = None
    RETURNS: ClassVar[tuple[Output, ...]] = ()
    OUTPUT_NODE: ClassVar[bool] = False
    INPUT_IS_LIST: ClassVar[bool] = False
    NOT_IDEMPOTENT: ClassVar[bool] = False
    DEPRECATED: ClassVar[bool] = False
    EXPERIMENTAL: ClassVar[bool] = False
    # Hidden inputs shown in /object_info (e.g. {"prompt": "PROMPT"}); their values come from the context.
    HIDDEN: ClassVar[dict[str, str]] = {}
    # Inputs whose built-in checks (min/max/combo list) are replaced by `validate_inputs`.
    CUSTOM_VALIDATED: ClassVar[frozenset[str]] = frozenset()
    # True: `validate_inputs` also gets `input_types` (linked input name -> output type) and replaces the link
    # type check (ComfyUI's VALIDATE_INPUTS taking `input_types`).
    CHECKS_LINK_TYPES: ClassVar[bool] = False
    # True: linked inputs the class does not declare are kept and passed too (ComfyUI's V1 `**kwargs` nodes).
    ACCEPTS_EXTRA_LINKS: ClassVar[bool] = False

    @classmethod
    def render_object_info(cls, info: dict[str, Any], services: Any = None) -> dict[str, Any]:
        """This class's `/object_info` entry, given the one built from its schema (adapters of foreign node
        protocols render their own)."""
        return info

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], services: Any = None) -> Any:
        """Extra cache-key material computed from constant inputs before execution (ComfyUI's IS_CHANGED).

        Return NaN to force a re-run every time. `services` is the node pack's services object."""
        return None

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], services: Any = None) -> bool | str:
        """Custom validation of constant inputs; return True or an error message."""
        return True

    @classmethod
    def estimate(cls, inputs: dict[str, Any], upstream: dict[str, Any], services: Any = None) -> Estimate | None:
        """What running this node will cost, from its constant `inputs` and, for linked inputs, the `upstream`
        output's extent (or None when unknown); checked against the admission limits before queueing.

        Must be cheap (no file reads beyond stat or an image header). None: no cost of its own, each output
        takes the extent of the first linked input of the same type."""
        return None

    def check_lazy_status(self, ctx: ExecutionContext) -> list[str]:
        """Names of lazy inputs still needed; unevaluated lazy inputs are None when this is called."""
        return []

    def execute(self, ctx: ExecutionContext) -> tuple[Any, ...] | NodeOutput:
        raise NotImplementedError


@dataclass(frozen=True)
class InputInfo:
    name: str
    spec: InputSpec
    default: Any
    required: bool


@dataclass(frozen=True)
class NodeSchema:
    """Everything the engine needs to know about a node class, extracted once at registration."""

    name: str
    cls: type[Node]
    inputs: dict[str, InputInfo]
    outputs: tuple[Output, ...]
    display_name: str
    category: str
    description: str
    output_node: bool
    input_is_list: bool
    not_idempotent: bool
    hidden: dict[str, str]
    custom_validated: frozenset[str]
    has_fingerprint: bool
    has_validation: bool
    has_estimate: bool = False
    lazy_inputs: frozenset[str] = field(default_factory=frozenset)

    @property
    def required(self) -> list[str]:
        return [n for n, i in self.inputs.items() if i.required]

    @property
    def optional(self) -> list[str]:
        return [n for n, i in self.inputs.items() if not i.required]


_INFERRED_SPECS: dict[Any, type[InputSpec]] = {int: IntInput, float: FloatInput, str: StringInput, bool: BooleanInput}


class NodeDefinitionError(TypeError):
    """A node class breaks the contract (raised at registration, never at run time)."""


def _overrides(cls: type[Node], name: str) -> bool:
    return getattr(cls, name).__func__ is not getattr(Node, name).__func__


def schema_of(cls: type[Node]) -> NodeSchema:
    if not (inspect.isclass(cls) and issubclass(cls, Node)):
        raise NodeDefinitionError(f"{cls!r} is not a Node subclass")
    inputs: dict[str, InputInfo] = {}
    for name, info in cls.model_fields.items():
        spec = next((m for m in info.metadata if isinstance(m, InputSpec)), None)
        if spec is None:
            inferred = _INFERRED_SPECS.get(info.annotation)
            if inferred is None:
                raise NodeDefinitionError(f"{cls.__name__}.{name}: annotate with an input spec (Int, Socket, …)")
            spec = inferred()
        default = None if info.is_required() else info.get_default(call_default_factory=True)
        inputs[name] = InputInfo(name, spec, default, required=not spec.optional)
    if not isinstance(cls.RETURNS, tuple) or not all(isinstance(o, Output) for o in cls.RETURNS):
        raise NodeDefinitionError(f"{cls.__name__}.RETURNS must be a tuple of Output")
    doc = inspect.getdoc(cls) if cls.__doc__ else ""
    return NodeSchema(
        name=cls.NAME or cls.__name__,
        cls=cls,
        inputs=inputs,
        outputs=cls.RETURNS,
        display_name=cls.DISPLAY_NAME or cls.NAME or cls.__name__,
        category=cls.CATEGORY,
        description=cls.DESCRIPTION if cls.DESCRIPTION is not None else (doc or ""),
        output_node=cls.OUTPUT_NODE,
        input_is_list=cls.INPUT_IS_LIST,
        not_idempotent=cls.NOT_IDEMPOTENT,
        hidden=dict(cls.HIDDEN),
        custom_validated=frozenset(cls.CUSTOM_VALIDATED),
        has_fingerprint=_overrides(cls, "fingerprint"),
        has_validation=_overrides(cls, "validate_inputs"),
        has_estimate=_overrides(cls, "estimate"),
        lazy_inputs=frozenset(n for n, i in inputs.items() if i.spec.lazy),
    )
