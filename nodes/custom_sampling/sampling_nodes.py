"""SamplerCustom and SamplerCustomAdvanced: one sampling run from a NOISE, a GUIDER (or cfg and two
conditionings), a SAMPLER and SIGMAS, through the same pipeline, progress and previews as KSampler."""

from __future__ import annotations

from typing import Annotated

from graphengine import Boolean, Float, Int, Node, Output
from graphengine.spec import INT_LIMIT

from .. import costs
from ..sampling import run_sampler
from ..samplers.pipeline import sample_sigmas
from ..types import Conditioning, Latent, Model
from .guiders import Guider as GuiderValue
from .noise import EmptyNoise, RandomNoise
from .samplers import SamplerChoice
from .sigmas import as_sigmas
from .types import Guider, Noise, Sampler, Sigmas

RETURNS = (Output("LATENT", name="output"), Output("LATENT", name="denoised_output"))


def estimate_steps(upstream: dict, inputs: dict) -> int:
    """Network passes of a run: one per step, the step count being the sigma count less one (a linked SIGMAS's
    count is known only from its extent, else one step is assumed)."""
    extent = upstream.get("sigmas")
    if isinstance(extent, dict) and isinstance(extent.get("count"), int):
        return max(0, extent["count"] - 1)
    return 1


def _check(value, kind: type, node: str, what: str):
    if not isinstance(value, kind):
        raise ValueError(f"{node}: {what} input is a {type(value).__name__}, not a {kind.__name__}")
    return value


def sample_custom(ctx, *, node: str, noise, guider: GuiderValue, sampler: SamplerChoice, sigmas,
                  latent: dict) -> tuple[dict, dict]:
    sigmas = as_sigmas(sigmas, node)
    _check(sampler, SamplerChoice, node, "the SAMPLER")
    return run_sampler(ctx, guider.model, sample=sample_sigmas, sigmas=sigmas, noise=noise.generate(latent),
                       seed=noise.seed, sampler_name=sampler.name, sampler=sampler.function,
                       sampler_options=sampler.options, positive=guider.positive, negative=guider.negative,
                       cfg=guider.cfg, predict=guider.predict, latent=latent)


class SamplerCustom(Node):
    """Samples with a chosen sampler and sigmas, cfg between positive and negative; also returns the last x0."""

    CATEGORY = "sampling/custom_sampling"
    RETURNS = RETURNS

    model: Model
    add_noise: Annotated[bool, Boolean()] = True
    noise_seed: Annotated[int, Int(min=0, max=INT_LIMIT, control_after_generate=True)] = 0
    cfg: Annotated[float, Float(min=0.0, max=100.0, step=0.1, round=0.01)] = 8.0
    positive: Conditioning
    negative: Conditioning
    sampler: Sampler
    sigmas: Sigmas
    latent_image: Latent

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        return costs.sampling(upstream.get("latent_image"), estimate_steps(upstream, inputs), outputs=2)

    def execute(self, ctx) -> tuple:
        if self.model is None:
            raise ValueError("SamplerCustom: the MODEL input is empty (the checkpoint has no diffusion model)")
        seed = int(self.noise_seed)
        noise = RandomNoise(seed) if self.add_noise else EmptyNoise(seed)
        guider = GuiderValue(self.model, self.positive, self.negative, float(self.cfg))
        return sample_custom(ctx, node="SamplerCustom", noise=noise, guider=guider, sampler=self.sampler,
                             sigmas=self.sigmas, latent=self.latent_image)


class SamplerCustomAdvanced(Node):
    """Samples with a NOISE, a GUIDER, a SAMPLER and SIGMAS; also returns the last x0 prediction."""

    CATEGORY = "sampling/custom_sampling"
    RETURNS = RETURNS

    noise: Noise
    guider: Guider
    sampler: Sampler
    sigmas: Sigmas
    latent_image: Latent

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        return costs.sampling(upstream.get("latent_image"), estimate_steps(upstream, inputs), outputs=2)

    def execute(self, ctx) -> tuple:
        node = "SamplerCustomAdvanced"
        _check(self.noise, (RandomNoise, EmptyNoise), node, "the NOISE")
        _check(self.guider, GuiderValue, node, "the GUIDER")
        return sample_custom(ctx, node=node, noise=self.noise, guider=self.guider, sampler=self.sampler,
                             sigmas=self.sigmas, latent=self.latent_image)


NODE_CLASSES = [SamplerCustom, SamplerCustomAdvanced]
