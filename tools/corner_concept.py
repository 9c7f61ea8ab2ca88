"""The bundled demo LoRA's concept: shapes in the four corners of the image ("a red circle in the top left
corner"). The base model never saw a shape in a corner nor the word "corner" (its anchors are left, right, top,
bottom and center), and the concept stays inside what the demo VAE can draw: a LoRA changes only the UNet and
the text encoder, and the VAE, trained on nine flat colours, turns unseen colours (pink, cyan, ...) into
known ones, so a colour concept could not show.

Training scenes, the fixed evaluation set (excluded from training) and its score. Pure numpy + PIL.
"""

from __future__ import annotations

import random

import shapes_data as sd

TRIGGER_WORDS = tuple(sd.CORNER_PHRASES.values())  # "in the top left corner", ...
CONCEPT_EVAL_SEED = 4321
DIAGONALS = (("top left", "bottom right"), ("top right", "bottom left"))
PAIR_PROBABILITY = 0.2
EVAL_PAIRS = 4


def corner_scene(rng: random.Random, two_objects: bool | None = None) -> sd.SceneSpec:
    """One shape in a random corner, or (PAIR_PROBABILITY) two in opposite corners; colours as in shapes_data."""
    if two_objects is None:
        two_objects = rng.random() < PAIR_PROBABILITY
    corners = rng.choice(DIAGONALS) if two_objects else (rng.choice(list(sd.CORNER_ANCHORS)),)
    objects: list[sd.ShapeSpec] = []
    for corner in corners:
        color = rng.choice([c for c in sd.OBJECT_COLORS if c not in {o.color for o in objects}])
        objects.append(sd.ShapeSpec(color, rng.choice(sd.SHAPES), corner, rng.choice(sd.SIZES)))
    background = rng.choice([c for c in sd.BACKGROUND_COLORS if c not in {o.color for o in objects}])
    return sd.SceneSpec(tuple(objects), background)


def concept_eval_scenes() -> list[sd.SceneSpec]:
    """24 single-object scenes (every corner x shape x size, seeded colours and backgrounds) + 4 diagonal pairs."""
    rng = random.Random(CONCEPT_EVAL_SEED)
    scenes = []
    for corner in sd.CORNER_ANCHORS:
        for shape in sd.SHAPES:
            for size in sd.SIZES:
                color = rng.choice(list(sd.OBJECT_COLORS))
                background = rng.choice([c for c in sd.BACKGROUND_COLORS if c != color])
                scenes.append(sd.SceneSpec((sd.ShapeSpec(color, shape, corner, size),), background))
    scenes.extend(corner_scene(rng, two_objects=True) for _ in range(EVAL_PAIRS))
    return scenes


def training_corner_scene(rng: random.Random, held_out: list[sd.SceneSpec]) -> sd.SceneSpec:
    """A corner scene sharing no (colour, shape, corner, size, background) combination with `held_out`."""
    while True:
        scene = corner_scene(rng)
        if not sd.is_held_out(scene, held_out):
            return scene


def score_concept(image, spec: sd.SceneSpec) -> dict:
    """shapes_data.score with the corners among the anchors a centroid may be nearest to."""
    return sd.score(image, spec, anchors=sd.ALL_ANCHORS)
