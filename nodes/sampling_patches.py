"""ComfyUI's sampling and guidance patch nodes: a MODEL in, a new MODEL handle out, the cached base untouched.

ModelSamplingDiscrete / ModelSamplingContinuousEDM / ModelSamplingContinuousV swap the handle's sigma
parameterisation (`nodes.samplers.model_sampling`); RescaleCFG, CFGZeroStar, APG and DifferentialDiffusion add a
guidance hook (`nodes.samplers.guidance`) that the sampler applies where cfg combines cond and uncond;
PerturbedAttentionGuidance and SelfAttentionGuidance add post-cfg hooks that run the model again with the middle
block's self-attention perturbed or observed (`nodes.samplers.attention_guidance`)."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, ClassVar

from graphengine import Boolean, Combo, Float, Node, Output

from .model_patches.mid_attention import IdentityMidSelfAttention, MidAttentionRecorder
from .samplers import attention_guidance, guidance
from .samplers.latent_format import PLAYGROUND_V25_SCALE, PLAYGROUND_V25_STATS
from .samplers import model_sampling as schedules  # its classes share names with the nodes below
from .types import Model

# combo value -> the sampling layer's prediction name
DISCRETE_PREDICTIONS = {"eps": "eps", "v_prediction": "v", "lcm": "lcm", "x0": "x0", "img_to_img": "img_to_img"}
# combo value -> (prediction, sigma_data), in ComfyUI's order; edm_playground_v2.5 also sets Playground v2.5's
# latent format; cosmos_rflow belongs to Cosmos models (not an SD family) and is refused when run
EDM_PREDICTIONS = {"v_prediction": ("v", 1.0), "edm": ("edm", 0.5), "edm_playground_v2.5": ("edm", 0.5),
                   "eps": ("eps", 1.0), "cosmos_rflow": None}
SigmaBound = Float(min=0.0, max=1000.0, step=0.001, round=False)


def _model(value: Any, node: str) -> Any:
    if value is None:
        raise ValueError(f"{node}: the MODEL input is empty (the checkpoint has no diffusion model)")
    return value


class ModelSamplingDiscrete(Node):
    """Samples the model with another prediction type on the discrete DDPM schedule, optionally zero terminal SNR."""

    CATEGORY = "advanced/model"
    RETURNS = (Output("MODEL"),)

    model: Model
    sampling: Annotated[str, Combo(list(DISCRETE_PREDICTIONS))]
    zsnr: Annotated[bool, Boolean(tooltip="Rescale the schedule to zero terminal SNR.")] = False

    def execute(self, ctx) -> tuple:
        prediction = DISCRETE_PREDICTIONS[self.sampling]
        cls = schedules.ModelSamplingDiscreteDistilled if prediction == "lcm" else schedules.ModelSamplingDiscrete
        return (_model(self.model, "ModelSamplingDiscrete").with_model_sampling(cls(prediction, zsnr=self.zsnr)),)


class ModelSamplingContinuousEDM(Node):
    """Samples the model on a continuous EDM schedule between sigma_min and sigma_max."""

    CATEGORY = "advanced/model"
    RETURNS = (Output("MODEL"),)
    PREDICTIONS: ClassVar[dict] = EDM_PREDICTIONS
    SCHEDULE: ClassVar[type] = schedules.ModelSamplingContinuousEDM

    model: Model
    sampling: Annotated[str, Combo(list(EDM_PREDICTIONS))]
    sigma_max: Annotated[float, SigmaBound] = 120.0
    sigma_min: Annotated[float, SigmaBound] = 0.002

    @classmethod
    def validate_inputs(cls, inputs, services=None):
        low, high = inputs.get("sigma_min"), inputs.get("sigma_max")
        if isinstance(low, (int, float)) and isinstance(high, (int, float)) and not 0 < low < high:
            return f"need 0 < sigma_min < sigma_max, got sigma_min={low}, sigma_max={high}"
        return True

    def execute(self, ctx) -> tuple:
        if self.PREDICTIONS[self.sampling] is None:
            raise ValueError(f"{type(self).__name__}: sampling {self.sampling!r} is for Cosmos video models, a model "
                             "family this engine does not support")
        prediction, sigma_data = self.PREDICTIONS[self.sampling]
        sampling = self.SCHEDULE(prediction, self.sigma_min, self.sigma_max, sigma_data)
        model = _model(self.model, type(self).__name__).with_model_sampling(sampling)
        if self.sampling == "edm_playground_v2.5":
            model = dataclasses.replace(model, latent_scale_factor=PLAYGROUND_V25_SCALE,
                                        latent_stats=PLAYGROUND_V25_STATS)
        return (model,)


class ModelSamplingContinuousV(ModelSamplingContinuousEDM):
    """Samples a v-prediction model on a continuous schedule with timestep 2·atan(sigma)/pi."""

    PREDICTIONS: ClassVar[dict] = {"v_prediction": ("v", 1.0)}
    SCHEDULE: ClassVar[type] = schedules.ModelSamplingContinuousV

    sampling: Annotated[str, Combo(["v_prediction"])]
    sigma_max: Annotated[float, SigmaBound] = 500.0
    sigma_min: Annotated[float, SigmaBound] = 0.03


class RescaleCFG(Node):
    """Rescales the guided prediction towards the cond prediction's spread (fixes over-exposure at high cfg)."""

    CATEGORY = "advanced/model"
    RETURNS = (Output("MODEL"),)

    model: Model
    multiplier: Annotated[float, Float(min=0.0, max=1.0, step=0.01)] = 0.7

    def execute(self, ctx) -> tuple:
        multiplier = float(self.multiplier)
        # multiplier 0 still replaces an earlier cfg function, with plain cfg bit for bit
        fn = guidance.plain_cfg if multiplier == 0 else (lambda args: guidance.rescale_cfg(args, multiplier))
        return (_model(self.model, "RescaleCFG").with_guidance(guidance.StatelessHook("cfg", fn)),)


class CFGZeroStar(Node):
    """CFG-Zero*: scales the unconditional prediction by its optimal projection onto the conditional one."""

    CATEGORY = "advanced/guidance"
    RETURNS = (Output("MODEL", name="patched_model"),)

    model: Model

    def execute(self, ctx) -> tuple:
        return (_model(self.model, "CFGZeroStar").with_guidance(guidance.StatelessHook("post_cfg",
                                                                                       guidance.cfg_zero_star)),)


class APG(Node):
    """Adaptive Projected Guidance: damps the guidance component parallel to the conditional prediction."""

    DISPLAY_NAME = "Adaptive Projected Guidance"
    CATEGORY = "sampling/custom_sampling"
    RETURNS = (Output("MODEL"),)

    model: Model
    eta: Annotated[float, Float(min=-10.0, max=10.0, step=0.01,
                                tooltip="Scale of the guidance part parallel to the cond; 1 keeps plain cfg's.")] = 1.0
    norm_threshold: Annotated[float, Float(min=0.0, max=50.0, step=0.1,
                                           tooltip="Clip the guidance norm to this value; 0 disables.")] = 5.0
    momentum: Annotated[float, Float(min=-5.0, max=1.0, step=0.01,
                                     tooltip="Running average of the guidance over the steps; 0 disables.")] = 0.0

    def execute(self, ctx) -> tuple:
        hook = guidance.AdaptiveProjectedGuidance(float(self.eta), float(self.norm_threshold), float(self.momentum))
        return (_model(self.model, "APG").with_guidance(hook),)


class DifferentialDiffusion(Node):
    """Inpaints with a soft mask: each step regenerates only where the mask reaches the step's progress."""

    DISPLAY_NAME = "Differential Diffusion"
    CATEGORY = "_for_testing"
    EXPERIMENTAL = True
    RETURNS = (Output("MODEL"),)

    model: Model
    strength: Annotated[float, Float(min=0.0, max=1.0, step=0.01, optional=True)] = 1.0

    def execute(self, ctx) -> tuple:
        strength = float(self.strength)

        def mask_for_step(sigma, mask, sigmas, model_sampling):
            return guidance.differential_mask(sigma, mask, sigmas, model_sampling, strength)

        return (_model(self.model, "DifferentialDiffusion").with_guidance(guidance.StatelessHook("denoise_mask",
                                                                                                 mask_for_step)),)


class PerturbedAttentionGuidance(Node):
    """Perturbed-Attention Guidance: steers away from the prediction with identity middle-block self-attention."""

    CATEGORY = "model_patches/unet"
    RETURNS = (Output("MODEL"),)

    model: Model
    scale: Annotated[float, Float(min=0.0, max=100.0, step=0.01, round=0.01)] = 3.0

    def execute(self, ctx) -> tuple:
        model = _model(self.model, "PerturbedAttentionGuidance")
        if self.scale == 0:  # adds nothing: the same image as the model alone
            return (model,)
        hook = attention_guidance.PerturbedAttentionGuidance(float(self.scale), IdentityMidSelfAttention())
        return (model.with_guidance(hook),)


class SelfAttentionGuidance(Node):
    """Self-Attention Guidance: steers away from the prediction for a copy blurred where the model attends most."""

    DISPLAY_NAME = "Self-Attention Guidance"
    CATEGORY = "_for_testing"
    EXPERIMENTAL = True
    RETURNS = (Output("MODEL"),)

    model: Model
    scale: Annotated[float, Float(min=-2.0, max=5.0, step=0.01)] = 0.5
    blur_sigma: Annotated[float, Float(min=0.0, max=10.0, step=0.1)] = 2.0

    def execute(self, ctx) -> tuple:
        model = _model(self.model, "SelfAttentionGuidance")
        if self.scale == 0:  # adds nothing, not even the uncond pass at cfg 1
            return (model,)
        hook = attention_guidance.SelfAttentionGuidance(float(self.scale), float(self.blur_sigma),
                                                        MidAttentionRecorder)
        return (model.with_guidance(hook),)


NODE_CLASSES = [ModelSamplingDiscrete, ModelSamplingContinuousEDM, ModelSamplingContinuousV, RescaleCFG,
                CFGZeroStar, APG, DifferentialDiffusion, PerturbedAttentionGuidance, SelfAttentionGuidance]
