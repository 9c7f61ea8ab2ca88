"""ComfyUI's V3 schema API (`comfy_api.latest`: `io`, `ui`, `ComfyExtension`) as far as image workflows use it.

Written from the API's documented names and fields; a V3 class is adapted onto the engine by `v3.adapt_v3`."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ..node import ExecutionBlocker


def _present(**options: Any) -> dict[str, Any]:
    return {k: v for k, v in options.items() if v is not None}


class Input:
    """One input of a V3 schema; `as_entry()` is its V1 `(type, options)` form."""

    io_type = "*"

    def __init__(self, id: str, display_name: str | None = None, optional: bool = False,
                 tooltip: str | None = None, lazy: bool | None = None, extra_dict: dict[str, Any] | None = None,
                 raw_link: bool | None = None, advanced: bool | None = None, **options: Any) -> None:
        self.id = id
        self.display_name = display_name
        self.optional = optional
        self.tooltip = tooltip
        self.lazy = lazy
        self.extra_dict = dict(extra_dict or {})
        self.options = _present(rawLink=raw_link, advanced=advanced,
                                forceInput=options.pop("force_input", None), **options)

    def as_dict(self) -> dict[str, Any]:
        return {**_present(display_name=self.display_name, tooltip=self.tooltip, lazy=self.lazy),
                **self.options, **self.extra_dict}

    def as_entry(self) -> tuple[Any, dict[str, Any]]:
        return self.io_type, self.as_dict()


class WidgetInput(Input):
    def __init__(self, id: str, display_name: str | None = None, optional: bool = False, tooltip: str | None = None,
                 lazy: bool | None = None, default: Any = None, socketless: bool | None = None,
                 **options: Any) -> None:
        super().__init__(id, display_name, optional, tooltip, lazy, default=default, socketless=socketless, **options)


class Output:
    io_type = "*"

    def __init__(self, id: str | None = None, display_name: str | None = None, tooltip: str | None = None,
                 is_output_list: bool = False) -> None:
        self.id = id
        self.display_name = display_name
        self.tooltip = tooltip
        self.is_output_list = is_output_list

    @property
    def name(self) -> str:
        return self.display_name or self.io_type


class ComfyType:
    """A V3 type: `Type.Input(...)` and `Type.Output(...)` declare sockets of `Type.io_type`."""

    io_type = "*"
    Input: type[Input] = Input
    Output: type[Output] = Output


def Custom(io_type: str) -> type[ComfyType]:
    """A type a pack names itself (ComfyUI's `io.Custom("MY_TYPE")`)."""
    return _socket_type(io_type)


def _socket_type(io_type: str, base: type[Input] = Input) -> type[ComfyType]:
    in_cls = type(f"{io_type}Input", (base,), {"io_type": io_type})
    out_cls = type(f"{io_type}Output", (Output,), {"io_type": io_type})
    return type(io_type, (ComfyType,), {"io_type": io_type, "Input": in_cls, "Output": out_cls})


class _IntInput(WidgetInput):
    io_type = "INT"

    def __init__(self, id: str, display_name: str | None = None, optional: bool = False, tooltip: str | None = None,
                 lazy: bool | None = None, default: int | None = None, min: int | None = None,
                 max: int | None = None, step: int | None = None, control_after_generate: bool | None = None,
                 display_mode: Any = None, **options: Any) -> None:
        super().__init__(id, display_name, optional, tooltip, lazy, default, min=min, max=max, step=step,
                         control_after_generate=control_after_generate,
                         display=getattr(display_mode, "value", display_mode), **options)


class _FloatInput(WidgetInput):
    io_type = "FLOAT"

    def __init__(self, id: str, display_name: str | None = None, optional: bool = False, tooltip: str | None = None,
                 lazy: bool | None = None, default: float | None = None, min: float | None = None,
                 max: float | None = None, step: float | None = None, round: float | None = None,
                 display_mode: Any = None, **options: Any) -> None:
        super().__init__(id, display_name, optional, tooltip, lazy, default, min=min, max=max, step=step,
                         round=round, display=getattr(display_mode, "value", display_mode), **options)


class _StringInput(WidgetInput):
    io_type = "STRING"

    def __init__(self, id: str, display_name: str | None = None, optional: bool = False, tooltip: str | None = None,
                 lazy: bool | None = None, default: str | None = None, multiline: bool | None = None,
                 placeholder: str | None = None, dynamic_prompts: bool | None = None, **options: Any) -> None:
        super().__init__(id, display_name, optional, tooltip, lazy, default, multiline=multiline,
                         placeholder=placeholder, dynamicPrompts=dynamic_prompts, **options)


class _BooleanInput(WidgetInput):
    io_type = "BOOLEAN"

    def __init__(self, id: str, display_name: str | None = None, optional: bool = False, tooltip: str | None = None,
                 lazy: bool | None = None, default: bool | None = None, label_on: str | None = None,
                 label_off: str | None = None, **options: Any) -> None:
        super().__init__(id, display_name, optional, tooltip, lazy, default, label_on=label_on,
                         label_off=label_off, **options)


class _ComboInput(WidgetInput):
    io_type = "COMBO"

    def __init__(self, id: str, options: Any = None, display_name: str | None = None, optional: bool = False,
                 tooltip: str | None = None, lazy: bool | None = None, default: Any = None,
                 control_after_generate: bool | None = None, upload: Any = None, **extra: Any) -> None:
        if isinstance(options, type) and issubclass(options, Enum):
            options = [member.value for member in options]
        if isinstance(default, Enum):
            default = default.value
        super().__init__(id, display_name, optional, tooltip, lazy, default, options=list(options or []),
                         control_after_generate=control_after_generate, **extra)
        if upload is not None:  # UploadType.image -> {"image_upload": True}
            self.options[f"{getattr(upload, 'value', upload)}_upload"] = True


def _widget_type(io_type: str, input_cls: type[Input]) -> type[ComfyType]:
    out_cls = type(f"{io_type}Output", (Output,), {"io_type": io_type})
    return type(io_type.title(), (ComfyType,), {"io_type": io_type, "Input": input_cls, "Output": out_cls})


Int = _widget_type("INT", _IntInput)
Float = _widget_type("FLOAT", _FloatInput)
String = _widget_type("STRING", _StringInput)
Boolean = _widget_type("BOOLEAN", _BooleanInput)
Combo = _widget_type("COMBO", _ComboInput)
AnyType = _socket_type("*")
Image = _socket_type("IMAGE")
Mask = _socket_type("MASK")
Latent = _socket_type("LATENT")
Conditioning = _socket_type("CONDITIONING")
Model = _socket_type("MODEL")
Clip = _socket_type("CLIP")
Vae = _socket_type("VAE")
ClipVision = _socket_type("CLIP_VISION")
ClipVisionOutput = _socket_type("CLIP_VISION_OUTPUT")
ControlNet = _socket_type("CONTROL_NET")
UpscaleModel = _socket_type("UPSCALE_MODEL")
Sampler = _socket_type("SAMPLER")
Sigmas = _socket_type("SIGMAS")
Noise = _socket_type("NOISE")
Guider = _socket_type("GUIDER")
StyleModel = _socket_type("STYLE_MODEL")
Gligen = _socket_type("GLIGEN")


class NumberDisplay(str, Enum):
    number = "number"
    slider = "slider"


class UploadType(str, Enum):
    image = "image"
    audio = "audio"
    video = "video"


class Hidden(str, Enum):
    """Hidden inputs a V3 node may ask for; their values appear on `cls.hidden` while it runs."""

    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"
    extra_pnginfo = "EXTRA_PNGINFO"
    dynprompt = "DYNPROMPT"
    auth_token_comfy_org = "AUTH_TOKEN_COMFY_ORG"
    api_key_comfy_org = "API_KEY_COMFY_ORG"


class HiddenHolder:
    def __init__(self, **values: Any) -> None:
        for member in Hidden:
            setattr(self, member.name, values.get(member.name))


@dataclass
class Schema:
    node_id: str
    display_name: str | None = None
    category: str = "sd"
    inputs: list[Input] = field(default_factory=list)
    outputs: list[Output] = field(default_factory=list)
    hidden: list[Hidden] = field(default_factory=list)
    description: str = ""
    search_aliases: list[str] = field(default_factory=list)
    is_input_list: bool = False
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    is_dev_only: bool = False
    is_api_node: bool = False
    not_idempotent: bool = False
    enable_expand: bool = False
    accept_all_inputs: bool = False
    price_badge: Any = None
    essentials_category: str | None = None
    has_intermediate_output: bool = False


class NodeOutput:
    """What a V3 `execute` returns: output values, UI data, an expansion graph or a block."""

    def __init__(self, *args: Any, ui: Any = None, expand: dict[str, Any] | None = None,
                 block_execution: str | None = None) -> None:
        self.args = args
        self.ui = ui
        self.expand = expand
        self.block_execution = block_execution

    @property
    def result(self) -> tuple[Any, ...] | None:
        return self.args or None


class ComfyNode:
    """Base of V3 nodes: every hook is a classmethod; `cls.hidden` holds the hidden values during a run."""

    hidden: HiddenHolder = HiddenHolder()

    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError(f"{cls.__name__} must define define_schema()")

    @classmethod
    def execute(cls, **kwargs: Any) -> NodeOutput:
        raise NotImplementedError(f"{cls.__name__} must define execute()")

    @classmethod
    def validate_inputs(cls, **kwargs: Any) -> bool | str:
        return True

    @classmethod
    def fingerprint_inputs(cls, **kwargs: Any) -> Any:
        return None

    @classmethod
    def check_lazy_status(cls, **kwargs: Any) -> list[str]:
        return []


class ComfyExtension:
    """What a pack's `async comfy_entrypoint()` returns: its node classes, and an optional load hook."""

    async def on_load(self) -> None:
        return None

    async def get_node_list(self) -> list[type[ComfyNode]]:
        return []


class PreviewText:
    """UI text shown under a node (`ui.PreviewText(value)`)."""

    def __init__(self, value: str, **_: Any) -> None:
        self.value = value

    def as_dict(self) -> dict[str, Any]:
        return {"text": [self.value]}


class PreviewImage:
    """Images shown under a node (`ui.PreviewImage(image, cls=cls)`), saved to the temp folder by the node layer."""

    def __init__(self, image: Any, animated: bool = False, cls: Any = None, **_: Any) -> None:
        self.images = image
        self.animated = animated

    def render(self, services: Any) -> dict[str, Any]:
        save = getattr(services, "preview_images", None)
        if not callable(save):
            raise RuntimeError("ui.PreviewImage: this engine's node layer cannot save preview images")
        return {"images": save(self.images), "animated": (self.animated,)}


class PreviewMask(PreviewImage):
    """A mask `[B, H, W]` shown as a grey image."""

    def __init__(self, mask: Any, animated: bool = False, cls: Any = None, **_: Any) -> None:
        image = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])).movedim(1, -1).expand(-1, -1, -1, 3)
        super().__init__(image, animated, cls)


__all__ = ["AnyType", "Boolean", "Clip", "ClipVision", "ClipVisionOutput", "Combo", "ComfyExtension", "ComfyNode",
           "ComfyType", "Conditioning", "ControlNet", "Custom", "ExecutionBlocker", "Float", "Gligen", "Guider",
           "Hidden", "Image", "Int", "Latent", "Mask", "Model", "NodeOutput", "Noise", "NumberDisplay", "Sampler",
           "Schema", "Sigmas", "String", "StyleModel", "UploadType", "UpscaleModel", "Vae"]
