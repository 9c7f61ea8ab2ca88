"""Interrupting long nodes: a cancel lands within one unit of work (text-encoder call, VAE chunk or tile, UNet
sub-batch, resize chunk, saved image, model component) and the next prompt on the same Executor runs correctly."""

from __future__ import annotations

import shutil
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from graphengine import CancelToken, Executing, Executor, Progress

from .conftest import IMAGE_SIZE

CKPT = "tiny_sd15.safetensors"
LONG_PROMPT = "a " * 10_000  # 134 windows: 5 text-encoder calls of 32 windows
TEMPORAL = {"temporal_size": 64, "temporal_overlap": 8}


class CancelAtCheck(CancelToken):
    """Cancels itself at the k-th cancellation check made after `node` started (checks are counted)."""

    def __init__(self, node: str, k: int) -> None:
        super().__init__()
        self.node, self.k, self.armed, self.checks = node, k, False, 0

    def listener(self, event) -> None:
        if isinstance(event, Executing) and event.node == self.node:
            self.armed = True

    def raise_if_cancelled(self) -> None:
        if self.armed:
            self.checks += 1
            if self.checks == self.k:
                self.cancel()
        super().raise_if_cancelled()


def cancel_at_progress(token: CancelToken, node: str, value: int):
    """A listener cancelling when `node` reports progress `value` (unit `value` has then already started)."""
    def listener(event) -> None:
        if isinstance(event, Progress) and event.node == node and event.value == value:
            token.cancel()
    return listener


@contextmanager
def counting_calls(module: torch.nn.Module):
    calls = []
    handle = module.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        yield calls
    finally:
        handle.remove()


def run(executor: Executor, prompt: dict, token: CancelToken | None = None):
    return executor.execute(prompt, cancel=token or CancelToken())


def interrupted_at(result, node: str) -> bool:
    messages = dict((kind, data) for kind, data in result.messages)
    return result.status == "interrupted" and messages["execution_interrupted"]["node_id"] == node


def loaded(env, index: int):
    """The checkpoint's MODEL (0), CLIP (1) or VAE (2) handle, as the loader node gives it."""
    prompt = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
              "out": {"class_type": "Capture", "inputs": {"value": ["ckpt", index]}}}
    return env.capture(prompt)


def with_ckpt(**nodes) -> dict:
    return {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}}, **nodes}


def capture(link: list) -> dict:
    return {"class_type": "Capture", "inputs": {"value": link}}


def empty_latent(batch: int, size: int = IMAGE_SIZE) -> dict:
    return {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": batch}}


def test_long_prompt_stops_between_text_encoder_calls_and_the_next_prompt_encodes_it(env):
    clip = loaded(env, 1)
    prompt = with_ckpt(enc={"class_type": "CLIPTextEncode", "inputs": {"text": LONG_PROMPT, "clip": ["ckpt", 1]}},
                       out=capture(["enc", 0]))
    executor = Executor(env.registry)
    token = CancelToken()
    executor.events.subscribe(cancel_at_progress(token, "enc", 1))
    with counting_calls(clip.text_encoders["l"]) as calls:
        result = run(executor, prompt, token)
    assert interrupted_at(result, "enc")
    assert len(calls) == 2  # units 0 and 1 ran; the check before unit 2 of 5 stopped it

    with counting_calls(clip.text_encoders["l"]) as calls:
        result = run(executor, prompt)
    assert result.ok, result.error
    assert len(calls) == 5
    cond = result.outputs["out"]["value"][0][0][0]
    windows = clip.tokenize(LONG_PROMPT)["l"]
    ids = torch.tensor([[token for token, _ in window] for window in windows])
    with torch.no_grad():
        expected = clip.text_encoders["l"](input_ids=ids).last_hidden_state  # all windows in one call
    assert cond.shape == (1, 77 * len(windows), expected.shape[-1])
    torch.testing.assert_close(cond, expected.reshape(1, -1, expected.shape[-1]))


def test_vae_decode_and_encode_of_a_batch_stop_between_chunks(env):
    vae = loaded(env, 2)
    # 20 latents of 8x8 = 3 chunks (8, 8, 4 rows) on CPU
    prompt = with_ckpt(empty=empty_latent(20),
                       dec={"class_type": "VAEDecode", "inputs": {"samples": ["empty", 0], "vae": ["ckpt", 2]}},
                       enc={"class_type": "VAEEncode", "inputs": {"pixels": ["dec", 0], "vae": ["ckpt", 2]}},
                       out=capture(["enc", 0]))
    executor = Executor(env.registry)
    token = CancelToken()
    executor.events.subscribe(cancel_at_progress(token, "dec", 1))
    with counting_calls(vae.vae.decoder) as decodes, counting_calls(vae.vae.encoder) as encodes:
        result = run(executor, prompt, token)
    assert interrupted_at(result, "dec")
    assert (len(decodes), len(encodes)) == (2, 0)

    token = CancelToken()
    executor.events.subscribe(cancel_at_progress(token, "enc", 1))
    with counting_calls(vae.vae.decoder) as decodes, counting_calls(vae.vae.encoder) as encodes:
        result = run(executor, prompt, token)
    assert interrupted_at(result, "enc")
    assert (len(decodes), len(encodes)) == (3, 2)  # the decode finished, the encode stopped at its third chunk

    result = run(executor, prompt)
    assert result.ok, result.error
    latent = result.outputs["out"]["value"][0]["samples"]
    assert latent.shape == (20, 4, 8, 8)


def test_chunked_vae_passes_match_one_call():
    from nodes.handles import VaeModel

    from .tiny import tiny_vae

    vae = VaeModel(tiny_vae())
    latent = torch.randn(20, 4, 8, 8)  # 3 chunks on CPU
    ticks = []
    image = vae.decode(latent, progress=lambda done, total: ticks.append((done, total)))
    assert ticks == [(0, 3), (1, 3), (2, 3), (3, 3)]
    with torch.no_grad():
        expected = ((vae.vae.decode(latent).sample + 1) / 2).clamp(0, 1).movedim(1, -1)
        expected_latent = vae.vae.encode(image.movedim(-1, 1) * 2 - 1).latent_dist.mean
    torch.testing.assert_close(image, expected)
    torch.testing.assert_close(vae.encode(image), expected_latent)


def test_tiled_vae_passes_stop_between_tiles(env):
    vae = loaded(env, 2)
    prompt = with_ckpt(empty=empty_latent(1, size=128),
                       dec={"class_type": "VAEDecodeTiled", "inputs": {
                           "samples": ["empty", 0], "vae": ["ckpt", 2], "tile_size": 64, "overlap": 0, **TEMPORAL}},
                       enc={"class_type": "VAEEncodeTiled", "inputs": {
                           "pixels": ["dec", 0], "vae": ["ckpt", 2], "tile_size": 64, "overlap": 0, **TEMPORAL}},
                       out=capture(["enc", 0]))
    executor = Executor(env.registry)
    for node, expected in (("dec", (2, 0)), ("enc", (4, 2))):  # 4 tiles each
        token = CancelToken()
        executor.events.subscribe(cancel_at_progress(token, node, 1))
        with counting_calls(vae.vae.decoder) as decodes, counting_calls(vae.vae.encoder) as encodes:
            result = run(executor, prompt, token)
        assert interrupted_at(result, node)
        assert (len(decodes), len(encodes)) == expected
    result = run(executor, prompt)
    assert result.ok, result.error
    assert result.outputs["out"]["value"][0]["samples"].shape == (1, 4, 16, 16)


def ksampler(batch: int, steps: int = 2) -> dict:
    return with_ckpt(
        pos={"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": ["ckpt", 1]}},
        neg={"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        empty=empty_latent(batch),
        sample={"class_type": "KSampler", "inputs": {
            "model": ["ckpt", 0], "seed": 1, "steps": steps, "cfg": 5.0, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["empty", 0],
            "denoise": 1.0}},
        out=capture(["sample", 0]))


def test_big_batch_sampling_stops_between_unet_sub_batches(env):
    unet = loaded(env, 0).unet
    executor = Executor(env.registry)
    token = CancelToken()
    events = []
    executor.events.subscribe(events.append)
    # 96 latents of 8x8 with CFG = 192 rows: 2 UNet calls (128, 64 rows) per step on CPU
    with counting_calls(unet) as calls:
        handle = unet.register_forward_pre_hook(lambda *_: token.cancel())
        try:
            result = run(executor, ksampler(96), token)
        finally:
            handle.remove()
    assert interrupted_at(result, "sample")
    assert len(calls) == 1  # the second sub-batch of the first step never ran
    assert not [e for e in events if isinstance(e, Progress) and e.node == "sample"]

    with counting_calls(unet) as calls:
        result = run(executor, ksampler(96, steps=1))
    assert result.ok, result.error
    assert len(calls) == 2
    assert result.outputs["out"]["value"][0]["samples"].shape == (96, 4, 8, 8)


def test_chunked_unet_call_matches_one_call():
    from nodes.handles import UNetModel

    from .tiny import CONTEXT_DIM, tiny_unet

    # the SDXL layout: its added conditioning (pooled text, time ids) must be cut into the same row chunks
    model = UNetModel.build(tiny_unet(sdxl=True), prediction="eps", latent_scale_factor=0.13025, family="sdxl",
                            latent_space="sdxl")
    rows = 300  # 3 calls (128, 128, 44 rows) on CPU
    x, t = torch.randn(rows, 4, 8, 8), torch.linspace(1, 999, rows)
    context = torch.randn(rows, 77, CONTEXT_DIM)
    extra = model.extra_conds({"pooled_output": torch.randn(rows, CONTEXT_DIM)}, rows, 8, 8)
    checks = []
    out = model.apply_model(x, t, context, interrupt=lambda: checks.append(1), **extra)
    with torch.no_grad():
        expected = model.unet(x, t, encoder_hidden_states=context, added_cond_kwargs=extra).sample
    assert len(checks) == 4  # before each of 3 calls and after the last
    torch.testing.assert_close(out, expected)


def test_latent_upscale_and_image_ops_stop_between_chunks(env):
    executor = Executor(env.registry)
    # 40 latents upscaled to 256x256 latent pixels: 16 per chunk -> 3 chunks; the 2nd check (before chunk 2) cancels
    cases = [
        ("up", {"up": {"class_type": "LatentUpscale", "inputs": {
            "samples": ["empty", 0], "upscale_method": "bilinear", "width": 2048, "height": 2048, "crop": "disabled"}},
            "empty": empty_latent(40)}),
        ("scale", {"scale": {"class_type": "ImageScale", "inputs": {
            "image": ["dec", 0], "upscale_method": "bilinear", "width": 1024, "height": 1024, "crop": "disabled"}},
            **with_ckpt(empty=empty_latent(3), dec={"class_type": "VAEDecode", "inputs": {
                "samples": ["empty", 0], "vae": ["ckpt", 2]}})}),
    ]
    for node, nodes in cases:
        token = CancelAtCheck(node, 2)
        executor.events.subscribe(token.listener)
        result = run(executor, {**nodes, "out": capture([node, 0])}, token)
        assert interrupted_at(result, node)
        assert token.checks == 2
    result = run(executor, {**cases[1][1], "scale": {"class_type": "ImageScale", "inputs": {
        "image": ["dec", 0], "upscale_method": "bilinear", "width": 96, "height": 80, "crop": "disabled"}},
        "out": capture(["scale", 0]), "pixels": capture(["dec", 0])})
    assert result.ok, result.error
    pixels = result.outputs["pixels"]["value"][0]
    expected = F.interpolate(pixels.movedim(-1, 1), size=(80, 96), mode="bilinear").movedim(1, -1)
    torch.testing.assert_close(result.outputs["out"]["value"][0], expected)


def test_save_image_stops_between_images(env):
    executor = Executor(env.registry)
    prompt = with_ckpt(empty=empty_latent(4),
                       dec={"class_type": "VAEDecode", "inputs": {"samples": ["empty", 0], "vae": ["ckpt", 2]}},
                       save={"class_type": "SaveImage", "inputs": {"images": ["dec", 0],
                                                                   "filename_prefix": "interrupt/batch"}})
    token = CancelAtCheck("save", 2)
    executor.events.subscribe(token.listener)
    result = run(executor, prompt, token)
    assert interrupted_at(result, "save")
    folder = env.base / "output" / "interrupt"
    assert sorted(p.name for p in folder.iterdir()) == ["batch_00001_.png"]
    result = run(executor, prompt)
    assert result.ok, result.error
    assert len(list(folder.iterdir())) == 5


def test_checkpoint_loading_stops_between_components(env):
    checkpoints = env.base / "models" / "checkpoints"
    copy = checkpoints / "interrupt_copy.safetensors"
    shutil.copy(checkpoints / CKPT, copy)
    manager = env.registry.services.manager
    try:
        prompt = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": copy.name}},
                  "enc": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": ["ckpt", 1]}},
                  "out": capture(["enc", 0])}
        executor = Executor(env.registry)
        token = CancelAtCheck("ckpt", 2)  # the check before the VAE, after the UNet was built
        executor.events.subscribe(token.listener)
        result = run(executor, prompt, token)
        assert interrupted_at(result, "ckpt")
        assert token.checks == 2
        assert not [key for key in manager.cached_keys() if copy.name in str(key)]

        result = run(executor, prompt)
        assert result.ok, result.error
        reference = env.capture(with_ckpt(enc=prompt["enc"], out=capture(["enc", 0])))
        torch.testing.assert_close(result.outputs["out"]["value"][0][0][0], reference[0][0])
    finally:
        copy.unlink()


def test_server_interrupt_stops_a_huge_text_encode_and_the_next_prompt_runs(env, tmp_path):
    from tests.server.harness import async_test, receive_json, receive_until_done, serve

    huge = with_ckpt(enc={"class_type": "CLIPTextEncode", "inputs": {"text": "a " * 1_000_000, "clip": ["ckpt", 1]}},
                     zero={"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["enc", 0]}},
                     sample=ksampler(1)["sample"], pos=ksampler(1)["pos"], empty=empty_latent(1),
                     dec={"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}},
                     save={"class_type": "SaveImage", "inputs": {"images": ["dec", 0], "filename_prefix": "srv"}})
    huge["sample"]["inputs"]["negative"] = ["zero", 0]
    normal = {**huge, "enc": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}}}

    @async_test
    async def scenario():
        # a server whose text limit was raised (--max-text-length): by default admission refuses this prompt
        async with serve(tmp_path, registry=env.registry, limits={"max_text_length": 4_000_000}) as srv:
            ws = await srv.ws("huge")
            await receive_json(ws)
            reply = await srv.post_prompt(huge, client_id="huge")
            while True:  # the text node is working: it reported its first unit (of tokenizing)
                message = await receive_json(ws)
                if message["type"] == "progress" and message["data"]["node"] == "enc":
                    first = message["data"]
                    break
            assert (await srv.client.post("/interrupt")).status == 200
            frames = await receive_until_done(ws, reply["prompt_id"])
            kinds = [kind for kind, _ in frames]
            assert "execution_interrupted" in kinds and "execution_success" not in kinds
            assert next(d for k, d in frames if k == "execution_interrupted")["node_id"] == "enc"
            ticks = [first] + [d for k, d in frames if k == "progress" and d["node"] == "enc"]
            assert ticks[-1]["value"] < ticks[-1]["max"]  # it stopped inside the node's work, not after it

            reply = await srv.post_prompt(normal, client_id="huge")
            frames = await receive_until_done(ws, reply["prompt_id"])
            assert "execution_success" in [kind for kind, _ in frames]
            entry = await srv.wait_history(reply["prompt_id"])
            assert len(entry["outputs"]["save"]["images"]) == 1
            await ws.close()

    scenario()


def test_depth_estimation_of_a_batch_stops_between_calls(env):
    from nodes.depth import _estimate_depth, load_dpt_model, load_dpt_processor

    services = env.registry.services
    path = services.folders.resolve("depth", "tiny_dpt")
    dpt = services.manager.get(("depth", str(path)), lambda: load_dpt_model(path), "depth")
    prompt = with_ckpt(empty=empty_latent(9),
                       dec={"class_type": "VAEDecode", "inputs": {"samples": ["empty", 0], "vae": ["ckpt", 2]}},
                       depth={"class_type": "DepthEstimate", "inputs": {"image": ["dec", 0], "model_name": "tiny_dpt"}},
                       out=capture(["depth", 0]), pixels=capture(["dec", 0]))
    executor = Executor(env.registry)
    token = CancelToken()
    executor.events.subscribe(cancel_at_progress(token, "depth", 1))
    with counting_calls(dpt) as calls:
        result = run(executor, prompt, token)
    assert interrupted_at(result, "depth")
    assert len(calls) == 2  # of 3 calls (4, 4 and 1 images)

    result = run(executor, prompt)
    assert result.ok, result.error
    pixels = result.outputs["pixels"]["value"][0]
    expected = _estimate_depth(dpt, load_dpt_processor(path), pixels, None)  # the whole batch in one call
    torch.testing.assert_close(result.outputs["out"]["value"][0], expected)
