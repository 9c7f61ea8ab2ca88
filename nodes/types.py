"""Socket types of the Stable Diffusion nodes, as annotated field types for node classes.

Data conventions (ComfyUI's): IMAGE is a float tensor [B, H, W, C] in 0..1; MASK is [B, H, W] in 0..1;
LATENT is a dict {"samples": [B, C, h, w] (VAE units), optional "noise_mask", optional "batch_index"};
CONDITIONING is a list of [context tensor [B, tokens, dim], dict of extras] pairs."""

from typing import Annotated, Any

from graphengine import Socket

MAX_RESOLUTION = 16384

Model = Annotated[Any, Socket("MODEL")]
Clip = Annotated[Any, Socket("CLIP")]
Vae = Annotated[Any, Socket("VAE")]
Conditioning = Annotated[list, Socket("CONDITIONING")]
Latent = Annotated[dict, Socket("LATENT")]
Image = Annotated[Any, Socket("IMAGE")]
Mask = Annotated[Any, Socket("MASK")]
OptionalImage = Annotated[Any, Socket("IMAGE", optional=True)]
OptionalMask = Annotated[Any, Socket("MASK", optional=True)]
OptionalVae = Annotated[Any, Socket("VAE", optional=True)]
