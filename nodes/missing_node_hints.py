"""Where well-known node types this pack lacks come from: popular custom node packs and ComfyUI core nodes of model
families other than SD1.x/SD2.x/SDXL. Keys are class names or shell patterns; the first match gives the hint."""

from __future__ import annotations


def _pack(name: str) -> str:
    return f"comes from the custom node pack {name}, which this engine does not have"


def _family(name: str) -> str:
    return f"belongs to {name}, which this engine does not support (it runs SD1.x, SD2.x and SDXL)"


FLUX = _family("Flux")
SD3 = _family("Stable Diffusion 3 (also used by Flux and other newer models)")
HUNYUAN = _family("Hunyuan (video, image and 3D models)")
WAN = _family("Wan video")
LTXV = _family("LTX-Video")
VIDEO = _family("video models")
AUDIO = _family("audio models")

MISSING_NODE_HINTS: dict[str, str] = {
    # custom node packs
    "KSampler (Efficient)": _pack("Efficiency Nodes"),
    "KSampler Adv. (Efficient)": _pack("Efficiency Nodes"),
    "KSampler SDXL (Eff.)": _pack("Efficiency Nodes"),
    "Efficient Loader": _pack("Efficiency Nodes"),
    "Eff. Loader SDXL": _pack("Efficiency Nodes"),
    "LoRA Stacker": _pack("Efficiency Nodes"),
    "Control Net Stacker": _pack("Efficiency Nodes"),
    "Apply ControlNet Stack": _pack("Efficiency Nodes"),
    "XY Plot": _pack("Efficiency Nodes"),
    "HighRes-Fix Script": _pack("Efficiency Nodes"),
    "*|pysssss": _pack("ComfyUI-Custom-Scripts (pysssss)"),
    "UltimateSDUpscale*": _pack("ComfyUI_UltimateSDUpscale"),
    "IPAdapter*": _pack("ComfyUI_IPAdapter_plus"),
    "AIO_Preprocessor": _pack("comfyui_controlnet_aux (ControlNet preprocessors)"),
    "ControlNetPreprocessorSelector": _pack("comfyui_controlnet_aux (ControlNet preprocessors)"),
    "*Preprocessor": _pack("comfyui_controlnet_aux (ControlNet preprocessors)"),
    "*_Preprocessor": _pack("comfyui_controlnet_aux (ControlNet preprocessors)"),
    "FaceDetailer*": _pack("ComfyUI Impact Pack"),
    "DetailerForEach*": _pack("ComfyUI Impact Pack"),
    "SAMLoader": _pack("ComfyUI Impact Pack"),
    "UltralyticsDetectorProvider": _pack("ComfyUI Impact Subpack"),
    "Impact*": _pack("ComfyUI Impact Pack"),
    "*SEGS*": _pack("ComfyUI Impact Pack"),
    "*BasicPipe*": _pack("ComfyUI Impact Pack"),
    "* (rgthree)": _pack("rgthree-comfy"),
    "VHS_*": _pack("ComfyUI-VideoHelperSuite"),
    "ADE_*": _pack("ComfyUI-AnimateDiff-Evolved"),
    "ACN_*": _pack("ComfyUI-Advanced-ControlNet"),
    "BNK_*": _pack("ComfyUI_ADV_CLIP_emb / ComfyUI_Noise"),
    "CR *": _pack("Comfyroll Studio"),
    "easy *": _pack("ComfyUI-Easy-Use"),
    "ttN *": _pack("ComfyUI_tinyterraNodes"),
    "* [Crystools]": _pack("ComfyUI-Crystools"),
    "Anything Everywhere*": _pack("cg-use-everywhere"),
    "LayerMask: *": _pack("ComfyUI_LayerStyle"),
    "LayerStyle: *": _pack("ComfyUI_LayerStyle"),
    "LayerUtility: *": _pack("ComfyUI_LayerStyle"),
    "InstantID*": _pack("ComfyUI_InstantID"),
    "*KJ": _pack("ComfyUI-KJNodes"),
    # ComfyUI core nodes of other model families
    "CLIPTextEncodeFlux": FLUX,
    "ModelSamplingFlux": FLUX,
    "FluxGuidance": FLUX,
    "FluxDisableGuidance": FLUX,
    "Flux*": FLUX,
    "*Flux2*": FLUX,
    "EmptySD3LatentImage": SD3,
    "ModelSamplingSD3": SD3,
    "CLIPTextEncodeSD3": SD3,
    "TripleCLIPLoader": SD3,
    "SkipLayerGuidanceSD3": SD3,
    "QuadrupleCLIPLoader": _family("HiDream"),
    "ModelSamplingAuraFlow": _family("AuraFlow / Lumina 2 / Z-Image / Qwen-Image"),
    "CLIPTextEncodeLumina2": _family("Lumina 2"),
    "*QwenImage*": _family("Qwen-Image"),
    "*Hunyuan*": HUNYUAN,
    "Wan*": WAN,
    "EmptyWan*": WAN,
    "*LTXV*": LTXV,
    "EmptyMochiLatentVideo": _family("Mochi video"),
    "*Cosmos*": _family("Cosmos video"),
    "StableCascade_*": _family("Stable Cascade"),
    "SVD_img2vid_Conditioning": _family("Stable Video Diffusion"),
    "VideoLinearCFGGuidance": _family("Stable Video Diffusion"),
    "VideoTriangleCFGGuidance": _family("Stable Video Diffusion"),
    "CLIPTextEncodePixArtAlpha": _family("PixArt"),
    "CLIPTextEncodeHiDream": _family("HiDream"),
    "SaveVideo": VIDEO,
    "CreateVideo": VIDEO,
    "LoadVideo": VIDEO,
    "GetVideoComponents": VIDEO,
    "SaveWEBM": VIDEO,
    "EmptyLatentAudio": AUDIO,
    "*Audio": AUDIO,
    "ConditioningStableAudio": AUDIO,
}
