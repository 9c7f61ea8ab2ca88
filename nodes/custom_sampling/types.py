"""Socket types of the custom-sampling nodes (ComfyUI's SIGMAS, SAMPLER, NOISE and GUIDER).

SIGMAS is a 1-D float32 tensor of noise levels, highest first; SAMPLER is a `samplers.SamplerChoice`; NOISE a
`noise.RandomNoise` or `noise.EmptyNoise`; GUIDER a `guiders.Guider`."""

from typing import Annotated, Any

from graphengine import Socket

Sigmas = Annotated[Any, Socket("SIGMAS")]
Sampler = Annotated[Any, Socket("SAMPLER")]
Noise = Annotated[Any, Socket("NOISE")]
Guider = Annotated[Any, Socket("GUIDER")]
