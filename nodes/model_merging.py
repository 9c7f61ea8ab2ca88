"""ComfyUI's model-merge nodes: MODEL and CLIP handles that combine two models' weights, per block or as a whole.

A merge adds an `AppliedMerge` weight patch to model1's handle (see `nodes.lora.merge`): model2's same-named
weights, with model2's own patches, are read while model1 is patched for a run; neither cached model is copied or
changed. ComfyUI's formulas: Simple/Blocks W1·r + W2·(1−r) (ratio 1 is model1); Add W1 + W2; Subtract
m·(W1 − W2)."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from pydantic import create_model

from graphengine import Float, Node, Output

from .types import Clip, Model

log = logging.getLogger("graphengine.nodes.merge")

CATEGORY = "advanced/model_merging"
Ratio = Annotated[float, Float(min=0.0, max=1.0, step=0.01)]
Multiplier = Annotated[float, Float(min=-10.0, max=10.0, step=0.01)]
# ComfyUI leaves these CLIP entries out of a merge.
CLIP_SKIPPED = ("position_ids", "logit_scale")


def _present(value: Any, socket: str, node: str) -> Any:
    if value is None:
        raise ValueError(f"{node}: the {socket} input is empty")
    return value


def _check_fit(mine: Any, other: Any, node: str) -> None:
    """Refuse models with no weight in common; warn about the weights a merge leaves alone."""
    from .lora.merge import mismatched

    skipped = mismatched(mine, other)
    total = sum(1 for _ in mine.parameters())
    if len(skipped) == total:
        raise ValueError(f"{node}: the two models share no weight of the same name and shape (different model "
                         "families?)")
    if skipped:
        log.warning("%s: %d weight(s) differ in shape or are missing and are not merged, e.g. %s", node,
                    len(skipped), skipped[0])


def merged_model(model1: Any, model2: Any, rules: tuple, node: str) -> Any:
    """model1's handle plus model2's weights by `rules` ((prefix, keep, alpha); "" the default)."""
    from .lora.merge import AppliedMerge

    model1, model2 = _present(model1, "model1", node), _present(model2, "model2", node)
    if all(keep == 1 and alpha == 0 for _, keep, alpha in rules):
        return model1  # ratio 1 everywhere: model1 as it is
    _check_fit(model1.unet, model2.unet, node)
    patch = AppliedMerge({"unet": model2.unet_source}, model2.weight_patches, rules, model2.manager)
    return model1.with_weight_patch(patch)


def merged_clip(clip1: Any, clip2: Any, rules: tuple, node: str) -> Any:
    from .lora.merge import AppliedMerge

    clip1, clip2 = _present(clip1, "clip1", node), _present(clip2, "clip2", node)
    if all(keep == 1 and alpha == 0 for _, keep, alpha in rules):
        return clip1
    theirs = {clip2.slot_of(r): clip2.encoder_sources[r.name] for r in clip2.roles}
    mine, others = clip1.lora_targets(), clip2.lora_targets()
    if not set(mine) & set(others):
        raise ValueError(f"{node}: the two CLIP models have no text encoder in common")
    for slot in set(mine) & set(others):
        _check_fit(mine[slot], others[slot], node)
    patch = AppliedMerge(theirs, clip2.weight_patches, rules, clip2.manager, skip_suffixes=CLIP_SKIPPED)
    return clip1.clone(weight_patches=(*clip1.weight_patches, patch))


def ratio_rule(prefix: str, ratio: float) -> tuple[str, float, float]:
    return (prefix, ratio, 1.0 - ratio)


class ModelMerge(Node):
    """Base of the MODEL merge nodes."""

    CATEGORY = CATEGORY
    RETURNS = (Output("MODEL"),)

    model1: Model
    model2: Model


class ClipMerge(Node):
    """Base of the CLIP merge nodes."""

    CATEGORY = CATEGORY
    RETURNS = (Output("CLIP"),)

    clip1: Clip
    clip2: Clip


class ModelMergeSimple(ModelMerge):
    """Merges two diffusion models: model1·ratio + model2·(1 − ratio)."""

    ratio: Ratio = 1.0

    def execute(self, ctx) -> tuple:
        return (merged_model(self.model1, self.model2, (ratio_rule("", self.ratio),), "ModelMergeSimple"),)


class ModelMergeSubtract(ModelMerge):
    """Subtracts model2 from model1: (model1 − model2)·multiplier."""

    multiplier: Multiplier = 1.0

    def execute(self, ctx) -> tuple:
        rules = (("", self.multiplier, -self.multiplier),)
        return (merged_model(self.model1, self.model2, rules, "ModelMergeSubtract"),)


class ModelMergeAdd(ModelMerge):
    """Adds model2's weights to model1's."""

    def execute(self, ctx) -> tuple:
        return (merged_model(self.model1, self.model2, (("", 1.0, 1.0),), "ModelMergeAdd"),)


class CLIPMergeSimple(ClipMerge):
    """Merges two CLIP models: clip1·ratio + clip2·(1 − ratio)."""

    ratio: Ratio = 1.0

    def execute(self, ctx) -> tuple:
        return (merged_clip(self.clip1, self.clip2, (ratio_rule("", self.ratio),), "CLIPMergeSimple"),)


class CLIPMergeSubtract(ClipMerge):
    """Subtracts clip2 from clip1: (clip1 − clip2)·multiplier."""

    multiplier: Multiplier = 1.0

    def execute(self, ctx) -> tuple:
        rules = (("", self.multiplier, -self.multiplier),)
        return (merged_clip(self.clip1, self.clip2, rules, "CLIPMergeSubtract"),)


class CLIPMergeAdd(ClipMerge):
    """Adds clip2's weights to clip1's."""

    def execute(self, ctx) -> tuple:
        return (merged_clip(self.clip1, self.clip2, (("", 1.0, 1.0),), "CLIPMergeAdd"),)


class BlockMerge(ModelMerge):
    """Merges two diffusion models with one ratio per block (model1·ratio + model2·(1 − ratio))."""

    CATEGORY = "advanced/model_merging/model_specific"

    def execute(self, ctx) -> tuple:
        # Each ratio input is named by the prefix of the LDM weight names it sets (longest prefix wins); the first
        # also sets the weights no prefix matches (ComfyUI's rule).
        ratios = [(name, getattr(self, name)) for name in type(self).model_fields if name not in ("model1", "model2")]
        rules = (ratio_rule("", ratios[0][1]), *(ratio_rule(p, r) for p, r in ratios))
        return (merged_model(self.model1, self.model2, rules, type(self).__name__),)


class ModelMergeBlocks(BlockMerge):
    """Merges two diffusion models with separate ratios for the input, middle and output blocks."""

    CATEGORY = CATEGORY

    input: Ratio = 1.0
    middle: Ratio = 1.0
    out: Ratio = 1.0


def _block_node(name: str, blocks: list[str], doc: str) -> type[Node]:
    fields: dict[str, Any] = {prefix: (Ratio, 1.0) for prefix in blocks}
    return create_model(name, __base__=BlockMerge, __doc__=doc, __module__=__name__, **fields)


def _sd_blocks(inputs: int, outputs: int, dot: str) -> list[str]:
    return ["time_embed.", "label_emb.", *(f"input_blocks.{i}{dot}" for i in range(inputs)),
            *(f"middle_block.{i}{dot}" for i in range(3)), *(f"output_blocks.{i}{dot}" for i in range(outputs)),
            "out."]


ModelMergeSD1 = _block_node("ModelMergeSD1", _sd_blocks(12, 12, "."),
                            "Merges two SD1.x diffusion models with one ratio per UNet block.")
ModelMergeSD2 = _block_node("ModelMergeSD2", _sd_blocks(12, 12, "."),
                            "Merges two SD2.x diffusion models with one ratio per UNet block.")
ModelMergeSDXL = _block_node("ModelMergeSDXL", _sd_blocks(9, 9, ""),
                             "Merges two SDXL diffusion models with one ratio per UNet block.")

NODE_CLASSES = [ModelMergeSimple, ModelMergeBlocks, ModelMergeSubtract, ModelMergeAdd, CLIPMergeSimple,
                CLIPMergeSubtract, CLIPMergeAdd, ModelMergeSD1, ModelMergeSD2, ModelMergeSDXL]
