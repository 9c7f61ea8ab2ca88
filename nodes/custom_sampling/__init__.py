"""ComfyUI's custom-sampling nodes: schedulers and sigma operations (SIGMAS), sampler choices (SAMPLER), noise
(NOISE), guiders (GUIDER) and SamplerCustom / SamplerCustomAdvanced, over the engine's sampling pipeline."""

from . import guiders, noise, sampling_nodes, scheduler_nodes, samplers, sigmas

NODE_CLASSES = [*sampling_nodes.NODE_CLASSES, *scheduler_nodes.NODE_CLASSES, *sigmas.NODE_CLASSES,
                *samplers.NODE_CLASSES, *noise.NODE_CLASSES, *guiders.NODE_CLASSES]
