"""HypernetworkLoader (ComfyUI's node): an A1111/ComfyUI hypernetwork file as a module patch on the MODEL handle.

A hypernetwork file is a `torch.save` dict: options (`activation_func`, `is_layer_norm`, `use_dropout`,
`activate_output`, `last_layer_dropout`, `layer_structure`, …) and, for each width it applies to (an int key: 768,
1024, 320, …), two state dicts: the network for the keys and the one for the values. Each is a stack of Linear
layers (`linear.N.weight/bias`), each followed by the activation (not the last one, unless `activate_output`) and,
with `is_layer_norm`, a LayerNorm. A `.safetensors` file holds the same tensors as `<width>.<0|1>.<layer key>` with
the options in its metadata.

As in ComfyUI (and A1111), every attention of the UNet (self- and cross-attention) whose key/value input is of a
width in the file gets k_in = x + net_k(x) · strength and v_in = x + net_v(x) · strength before to_k / to_v; the
queries are left alone. Dropout layers are training-only and not built (ComfyUI leaves its Dropout(0.3) layers in
training mode, so its results are random when `use_dropout` is set)."""

from __future__ import annotations

import contextlib
import copy
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch

from graphengine import Combo, Float, Node, Output

from .. import costs
from ..loaders import loading
from ..models.errors import ModelFileError
from ..services import ModelFiles
from ..types import Model
from . import required
from .hooks import hook_set

ACTIVATIONS: dict[str, type[torch.nn.Module] | None] = {
    "linear": None, "relu": torch.nn.ReLU, "leakyrelu": torch.nn.LeakyReLU, "elu": torch.nn.ELU,
    "swish": torch.nn.Hardswish, "tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid, "softsign": torch.nn.Softsign,
    "mish": torch.nn.Mish,
}
OPTION_DEFAULTS = {"activation_func": "linear", "is_layer_norm": False, "activate_output": False}
PROJECTIONS = ("to_k", "to_v")  # net 0 maps the keys' input, net 1 the values'


class HypernetworkError(ModelFileError):
    """A hypernetwork file is unreadable or not in the hypernetwork layout."""


@dataclass(frozen=True, eq=False)
class HypernetworkPatch:
    """(net_k, net_v) per input width, added to the to_k / to_v inputs of every matching attention × strength."""

    networks: Mapping[int, tuple[torch.nn.Module, torch.nn.Module]]
    strength: float
    nbytes: int = field(default=0)

    @contextlib.contextmanager
    def applied(self, unet: torch.nn.Module) -> Iterator[None]:
        if self.strength == 0 or not self.networks:
            yield
            return
        placed: dict[tuple, tuple[torch.nn.Module, torch.nn.Module]] = {}  # copies on the inputs' device and dtype

        def shifted(x: torch.Tensor, which: int) -> torch.Tensor:
            width = int(x.shape[-1])
            if width not in self.networks:
                return x
            key = (width, x.device, x.dtype)
            if key not in placed:
                placed[key] = tuple(copy.deepcopy(net).to(x.device, x.dtype) for net in self.networks[width])
            return x + placed[key][which](x) * self.strength

        with hook_set() as hooks:
            for name, module in unet.named_modules():
                if name.endswith((".attn1", ".attn2")):
                    for which, projection in enumerate(PROJECTIONS):
                        hooks.map_input(getattr(module, projection), lambda x, which=which: shifted(x, which))
            yield


# -- the file ----------------------------------------------------------------------------------------------------

def natural_key(key: str) -> tuple:
    """Sort key putting `linear.10` after `linear.2`."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key))


def flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


def read_hypernetwork_file(path: Path) -> dict[Any, Any]:
    """The file's dict: widths -> [state_k, state_v] plus options (safetensors: regrouped from flat keys)."""
    from ..models.state_dict import SAFETENSORS_EXTENSIONS, read_pickled, read_state_dict

    if path.suffix.lower() not in SAFETENSORS_EXTENSIONS:
        return read_pickled(path)
    tensors, metadata = read_state_dict(path)
    content: dict[Any, Any] = dict(metadata)
    for key, tensor in tensors.items():
        width, which, rest = (key.split(".", 2) + ["", ""])[:3]
        if not (width.isdigit() and which in ("0", "1") and rest):
            raise HypernetworkError(f"{path.name}: unexpected key {key!r} (expected <width>.<0|1>.<layer key>)")
        content.setdefault(int(width), ({}, {}))[int(which)][rest] = tensor
    return content


def build_network(state: Mapping[str, torch.Tensor], width: int, options: Mapping[str, Any],
                  where: str) -> torch.nn.Sequential:
    """The Linear / activation / LayerNorm stack of one state dict, checked to map `width` back to `width`."""
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise HypernetworkError(f"{where}: expected a state dict of tensors")
    names = sorted((k[:-len(".weight")] for k in state if k.endswith(".weight")), key=natural_key)
    layer_norm, activation = flag(options["is_layer_norm"]), ACTIVATIONS[options["activation_func"]]
    per_linear = 2 if layer_norm else 1
    if not names or len(names) % per_linear:
        raise HypernetworkError(f"{where}: {len(names)} weight tensors do not form Linear"
                                f"{' + LayerNorm' if layer_norm else ''} layers")
    layers: list[torch.nn.Module] = []
    features = width
    linears = len(names) // per_linear
    for i in range(linears):
        weight, bias = (state.get(f"{names[i * per_linear]}.{p}") for p in ("weight", "bias"))
        if bias is None or weight.ndim != 2 or weight.shape[1] != features or bias.shape != weight.shape[:1]:
            raise HypernetworkError(f"{where}: layer {names[i * per_linear]!r} is not a Linear layer taking "
                                    f"{features} features")
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0])
        linear.load_state_dict({"weight": weight, "bias": bias})
        layers.append(linear)
        features = weight.shape[0]
        if activation is not None and (i < linears - 1 or flag(options["activate_output"])):
            layers.append(activation())
        if layer_norm:
            name = names[i * per_linear + 1]
            norm_weight, norm_bias = state[f"{name}.weight"], state.get(f"{name}.bias")
            if norm_bias is None or norm_weight.shape != (features,) or norm_bias.shape != (features,):
                raise HypernetworkError(f"{where}: layer {name!r} is not a LayerNorm of {features} features")
            norm = torch.nn.LayerNorm(features)
            norm.load_state_dict({"weight": norm_weight, "bias": norm_bias})
            layers.append(norm)
    if features != width:
        raise HypernetworkError(f"{where}: the network ends with {features} features, not {width}")
    return torch.nn.Sequential(*layers).eval().requires_grad_(False)


def load_hypernetwork(path: str | Path) -> dict[int, tuple[torch.nn.Module, torch.nn.Module]]:
    """The (net_k, net_v) pairs of a hypernetwork file by input width; a clear error naming the file otherwise."""
    path = Path(path)
    content = read_hypernetwork_file(path)
    if not isinstance(content, Mapping):
        raise HypernetworkError(f"{path.name}: expected a dict, found {type(content).__name__}")
    # A1111 saves None for options that were not set (e.g. activation_func of old files): the defaults.
    options = {k: default if content.get(k) is None else content[k] for k, default in OPTION_DEFAULTS.items()}
    if options["activation_func"] not in ACTIVATIONS:
        raise HypernetworkError(f"{path.name}: unsupported activation_func {options['activation_func']!r} "
                                f"(supported: {', '.join(ACTIVATIONS)})")
    networks = {}
    for key, pair in content.items():
        if not (isinstance(key, int) or (isinstance(key, str) and key.isdigit())):
            continue
        width = int(key)
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise HypernetworkError(f"{path.name}: entry {key!r} is not a pair of state dicts (keys, values)")
        networks[width] = tuple(build_network(state, width, options, f"{path.name}[{key}][{i}]")
                                for i, state in enumerate(pair))
    if not networks:
        raise HypernetworkError(f"{path.name}: not a hypernetwork file: no width entries (e.g. 768: [keys, values])")
    return networks


def networks_nbytes(networks: Mapping[int, tuple[torch.nn.Module, ...]]) -> int:
    return sum(p.numel() * p.element_size() for pair in networks.values() for net in pair for p in net.parameters())


class HypernetworkLoader(Node):
    """Applies a hypernetwork to the diffusion model's attention layers at the given strength."""

    CATEGORY = "loaders"
    RETURNS = (Output("MODEL"),)

    model: Model
    hypernetwork_name: Annotated[str, Combo(ModelFiles("hypernetworks"))]
    strength: Annotated[float, Float(min=-10.0, max=10.0, step=0.01)] = 1.0

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        return costs.model_file(services, "hypernetworks", inputs.get("hypernetwork_name"), 1)

    def execute(self, ctx) -> tuple:
        model = required(self.model, "MODEL", "HypernetworkLoader")
        with loading(self.hypernetwork_name):
            networks = load_hypernetwork(ctx.services.folders.resolve("hypernetworks", self.hypernetwork_name))
        if self.strength == 0:
            return (model,)
        return (model.with_module_patch(HypernetworkPatch(networks, self.strength, networks_nbytes(networks))),)


NODE_CLASSES = [HypernetworkLoader]
