"""The txt2img graph in the editor's own save format (UI workflow, schema 0.4), built from a compact table so node
positions, sockets and links stay consistent."""

from __future__ import annotations

from typing import Any

# node id -> (type, position, widget values, outputs [(name, type)])
NODES: dict[int, tuple[str, tuple[int, int], list[Any], list[tuple[str, str]]]] = {
    4: ("CheckpointLoaderSimple", (20, 200), ["tiny_sd15.safetensors"],
        [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]),
    6: ("CLIPTextEncode", (420, 40), ["a red apple on a wooden table"], [("CONDITIONING", "CONDITIONING")]),
    7: ("CLIPTextEncode", (420, 280), ["blurry, watermark"], [("CONDITIONING", "CONDITIONING")]),
    5: ("EmptyLatentImage", (420, 520), [64, 64, 1], [("LATENT", "LATENT")]),
    3: ("KSampler", (860, 120), [42, "fixed", 2, 7.0, "euler", "normal", 1.0], [("LATENT", "LATENT")]),
    8: ("VAEDecode", (1210, 120), [], [("IMAGE", "IMAGE")]),
    9: ("SaveImage", (1540, 120), ["editor"], []),
}
# (origin node, origin slot, target node, target input name, type)
LINKS: list[tuple[int, int, int, str, str]] = [
    (4, 0, 3, "model", "MODEL"), (6, 0, 3, "positive", "CONDITIONING"), (7, 0, 3, "negative", "CONDITIONING"),
    (5, 0, 3, "latent_image", "LATENT"), (4, 1, 6, "clip", "CLIP"), (4, 1, 7, "clip", "CLIP"),
    (3, 0, 8, "samples", "LATENT"), (4, 2, 8, "vae", "VAE"), (8, 0, 9, "images", "IMAGE"),
]
SIZES = {"CLIPTextEncode": (400, 200), "KSampler": (315, 262), "SaveImage": (320, 320)}


def _target_slot(index: int) -> int:
    """A link's input slot: its position among the links entering the same node (inputs are listed in order)."""
    same_target = [i for i, link in enumerate(LINKS) if link[2] == LINKS[index][2]]
    return same_target.index(index)


def txt2img_workflow() -> dict[str, Any]:
    links = [[index + 1, origin, slot, target, _target_slot(index), kind]
             for index, (origin, slot, target, _, kind) in enumerate(LINKS)]
    nodes = []
    for order, (node_id, (node_type, pos, widgets, outputs)) in enumerate(NODES.items()):
        inputs = [{"name": link[3], "type": link[4], "link": index + 1}
                  for index, link in enumerate(LINKS) if link[2] == node_id]
        nodes.append({
            "id": node_id, "type": node_type, "pos": list(pos), "size": list(SIZES.get(node_type, (300, 110))),
            "flags": {}, "order": order, "mode": 0, "inputs": inputs,
            "outputs": [{"name": name, "type": kind, "slot_index": slot,
                         "links": [index + 1 for index, link in enumerate(LINKS)
                                   if link[0] == node_id and link[1] == slot]}
                        for slot, (name, kind) in enumerate(outputs)],
            "properties": {"Node name for S&R": node_type}, "widgets_values": widgets,
        })
    return {"last_node_id": max(NODES), "last_link_id": len(LINKS), "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [40, 40]}}, "version": 0.4}
