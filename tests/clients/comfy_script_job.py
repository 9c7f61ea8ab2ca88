"""Run by test_comfy_script in its own interpreter (ComfyScript keeps its node classes and watch thread in module
state): `python comfy_script_job.py URL CHECKPOINT SIZE` prints format and size of the saved images as JSON on a line starting with RESULT (ComfyScript's watch thread
may print around it)."""

import json
import sys


def main(url: str, checkpoint: str, size: int) -> None:
    from comfy_script.runtime import Workflow, load

    load(url)
    from comfy_script.runtime import nodes  # the classes built from our /object_info

    with Workflow(wait=True):
        model, clip, vae = nodes.CheckpointLoaderSimple(checkpoint)
        positive = nodes.CLIPTextEncode("a lighthouse at dusk", clip)
        negative = nodes.CLIPTextEncode("text, watermark", clip)
        latent = nodes.EmptyLatentImage(size, size, 1)
        latent = nodes.KSampler(model, 5, 2, 7.0, "euler", "normal", positive, negative, latent, 1.0)
        result = nodes.SaveImage(nodes.VAEDecode(latent, vae), "comfyscript")
    images = result.wait().wait()  # NodeOutput -> ImageBatchResult -> PIL images fetched through /view
    print("RESULT " + json.dumps([{"format": image.format, "size": list(image.size)} for image in images]), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
