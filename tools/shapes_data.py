"""Synthetic "coloured shapes" data for the bundled demo model: scenes, renderer, captions, scorer.

A scene is one or two flat shapes on a plain background, e.g. the caption
"a small red circle on the left on a blue background". Images are 64x64 RGB, drawn at 4x and
box-downsampled (antialiased). The renderer also draws a "nearness" depth map in [0, 1]
(1 = nearest, the convention of MiDaS-style depth maps used by SD depth models): the background
is 0 and every object is nearer than it, larger objects nearer than smaller ones.

The scorer checks a generated image against a scene spec (colour, position, shape, size,
background) by assigning each pixel to the nearest of nine named colours.

Pure numpy + PIL; no torch, so tests and benchmarks can import it cheaply.
"""

from __future__ import annotations

import math
import random
import re
from collections import deque
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
SUPERSAMPLE = 4

OBJECT_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (245, 225, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "purple": (140, 40, 180),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
GRAY = (128, 128, 128)
# Backgrounds may be any object colour (other than the objects' own) or gray.
BACKGROUND_COLORS: dict[str, tuple[int, int, int]] = {**OBJECT_COLORS, "gray": GRAY}
SCORE_COLORS = BACKGROUND_COLORS  # the nine named colours the scorer classifies pixels into

SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom", "center")
ANCHORS: dict[str, tuple[float, float]] = {  # (x, y) in 64-px image coordinates
    "left": (17.0, 32.0),
    "right": (47.0, 32.0),
    "top": (32.0, 17.0),
    "bottom": (32.0, 47.0),
    "center": (32.0, 32.0),
}
POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
PAIR_LAYOUTS = (("left", "right"), ("top", "bottom"))
# Positions the base model never saw (no shape was ever drawn in a corner, no caption says "corner"), taught by
# the bundled demo LoRA (tools/train_demo_lora.py). Score corner prompts with anchors=ALL_ANCHORS.
CORNER_ANCHORS: dict[str, tuple[float, float]] = {
    "top left": (17.0, 17.0),
    "top right": (47.0, 17.0),
    "bottom left": (17.0, 47.0),
    "bottom right": (47.0, 47.0),
}
CORNER_PHRASES = {corner: f"in the {corner} corner" for corner in CORNER_ANCHORS}
ALL_ANCHORS = {**ANCHORS, **CORNER_ANCHORS}
ALL_POSITION_PHRASES = {**POSITION_PHRASES, **CORNER_PHRASES}
# Half-extent of a shape in px. Small tops out at a bbox of ~15 px, large starts at ~19 px.
RADIUS_RANGE = {"small": (5.5, 7.5), "large": (10.5, 12.5)}
SIZE_EXTENT_THRESHOLD = 18  # bbox extent (px) at or above which the scorer calls a shape large
COLOR_JITTER = 12
POSITION_JITTER = 3.0
TWO_OBJECT_PROBABILITY = 0.25

# Scorer thresholds (from the feasibility study).
MIN_COLOR_FRACTION = 0.01
# Pixels farther than this (RGB euclidean) from every named colour are left unclassified: they are
# antialiased edge mixtures, e.g. orange-on-white edges that would otherwise count as yellow.
MAX_COLOR_DISTANCE = 100.0
UNCLASSIFIED = -1
CONCENTRATION_RADIUS = 18.0
MIN_CONCENTRATION = 0.6
BORDER_WIDTH = 4
MIN_BORDER_FRACTION = 0.5
TRIANGLE_MAX_FILL = 0.65
CIRCLE_MAX_FILL = 0.93  # rendered circles fill 0.66-0.90 of their box, squares >= 0.97

HELD_OUT_SEED = 1234
HELD_OUT_SINGLE = 48
HELD_OUT_PAIRS = 8


@dataclass(frozen=True)
class ShapeSpec:
    """One object. Fields may be None in a spec parsed from a caption that omits them."""

    color: str
    shape: str
    position: str | None = None
    size: str | None = None


@dataclass(frozen=True)
class SceneSpec:
    objects: tuple[ShapeSpec, ...]
    background: str | None = None


@dataclass(frozen=True)
class PlacedShape:
    """A shape as drawn: centre and half-extent in 64-px coordinates, jittered colour, nearness."""

    spec: ShapeSpec
    center: tuple[float, float]
    radius: float
    rgb: tuple[int, int, int]
    nearness: float


# ----------------------------------------------------------------------------- rendering


def _jittered_rgb(rgb: tuple[int, int, int], rng: random.Random | None) -> tuple[int, int, int]:
    if rng is None:
        return rgb
    return tuple(int(min(255, max(0, c + rng.randint(-COLOR_JITTER, COLOR_JITTER)))) for c in rgb)


def _nearness(radius: float) -> float:
    """Nearness in [0.5, 1]: larger shapes are nearer; the background (0) is farthest."""
    low, high = RADIUS_RANGE["small"][0], RADIUS_RANGE["large"][1]
    return 0.5 + 0.5 * (radius - low) / (high - low)


def _check_complete(spec: SceneSpec) -> None:
    if spec.background is None or any(o.position is None or o.size is None for o in spec.objects):
        raise ValueError(f"cannot render an incomplete scene spec: {spec}")


def layout(spec: SceneSpec, seed: int | None = None) -> list[PlacedShape]:
    """Place the objects of a complete spec. seed=None: canonical (no jitter, mid-range radius)."""
    _check_complete(spec)
    rng = None if seed is None else random.Random(seed)
    placed = []
    for obj in spec.objects:
        low, high = RADIUS_RANGE[obj.size]
        ax, ay = ALL_ANCHORS[obj.position]
        if rng is None:
            radius, dx, dy = (low + high) / 2, 0.0, 0.0
        else:
            radius = rng.uniform(low, high)
            dx = rng.uniform(-POSITION_JITTER, POSITION_JITTER)
            dy = rng.uniform(-POSITION_JITTER, POSITION_JITTER)
        rgb = _jittered_rgb(OBJECT_COLORS[obj.color], rng)
        placed.append(PlacedShape(obj, (ax + dx, ay + dy), radius, rgb, _nearness(radius)))
    return placed


def _shape_outline(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | tuple:
    """Polygon points (triangle) or bounding box (circle, square) in supersampled pixels."""
    s = SUPERSAMPLE
    if shape == "triangle":
        # Equilateral, pointing up, bounding box centred on (cx, cy).
        half_width = r
        height = half_width * math.sqrt(3)
        top, bottom = cy - height / 2, cy + height / 2
        return [(cx * s, top * s), ((cx + half_width) * s, bottom * s), ((cx - half_width) * s, bottom * s)]
    half = r * 0.9 if shape == "square" else r
    return ((cx - half) * s, (cy - half) * s, (cx + half) * s, (cy + half) * s)


def _draw_shape(draw: ImageDraw.ImageDraw, placed: PlacedShape, fill) -> None:
    outline = _shape_outline(placed.spec.shape, placed.center[0], placed.center[1], placed.radius)
    if placed.spec.shape == "circle":
        draw.ellipse(outline, fill=fill)
    elif placed.spec.shape == "square":
        draw.rectangle(outline, fill=fill)
    else:
        draw.polygon(outline, fill=fill)


def render(spec: SceneSpec, seed: int | None = None) -> tuple[Image.Image, np.ndarray]:
    """Draw a complete scene. Returns (64x64 RGB image, float32 [64, 64] nearness depth in [0, 1])."""
    placed = layout(spec, seed)
    rng = None if seed is None else random.Random(seed + 1)
    big = IMAGE_SIZE * SUPERSAMPLE
    image = Image.new("RGB", (big, big), _jittered_rgb(BACKGROUND_COLORS[spec.background], rng))
    depth = Image.new("L", (big, big), 0)
    image_draw, depth_draw = ImageDraw.Draw(image), ImageDraw.Draw(depth)
    for obj in sorted(placed, key=lambda p: p.nearness):  # far to near, so nearer ones occlude
        _draw_shape(image_draw, obj, obj.rgb)
        _draw_shape(depth_draw, obj, int(round(obj.nearness * 255)))
    small = (IMAGE_SIZE, IMAGE_SIZE)
    depth_array = np.asarray(depth.resize(small, Image.Resampling.BOX), dtype=np.float32) / 255.0
    return image.resize(small, Image.Resampling.BOX), depth_array


# ----------------------------------------------------------------------------- captions


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _object_phrase(obj: ShapeSpec) -> str:
    words = [w for w in (obj.size, obj.color, obj.shape) if w is not None]
    phrase = f"{_article(words[0])} {' '.join(words)}"
    return phrase if obj.position is None else f"{phrase} {ALL_POSITION_PHRASES[obj.position]}"


def caption(spec: SceneSpec) -> str:
    """The caption of a spec; attributes that are None are left out."""
    text = " and ".join(_object_phrase(o) for o in spec.objects)
    if spec.background is not None:
        text += f" on {_article(spec.background)} {spec.background} background"
    return text


def drop_attributes(
    spec: SceneSpec, rng: random.Random, p_size: float = 0.3, p_position: float = 0.2, p_background: float = 0.25
) -> SceneSpec:
    """Training-time caption augmentation: drop size words, position phrases and/or the background."""
    drop_size, drop_position = rng.random() < p_size, rng.random() < p_position
    objects = tuple(
        replace(o, size=None if drop_size else o.size, position=None if drop_position else o.position)
        for o in spec.objects
    )
    return SceneSpec(objects, None if rng.random() < p_background else spec.background)


_COLOR_RE = "|".join(OBJECT_COLORS)
_POSITION_RE = "|".join(re.escape(p) for p in ALL_POSITION_PHRASES.values())
_OBJECT_RE = re.compile(
    rf"^an? (?:(?P<size>{'|'.join(SIZES)}) )?(?P<color>{_COLOR_RE}) (?P<shape>{'|'.join(SHAPES)})"
    rf"(?: (?P<position>{_POSITION_RE}))?$"
)
_BACKGROUND_RE = re.compile(rf"^(?P<rest>.*) on an? (?P<background>{'|'.join(BACKGROUND_COLORS)}) background$")
_PHRASE_TO_POSITION = {v: k for k, v in ALL_POSITION_PHRASES.items()}


def parse_prompt(text: str) -> SceneSpec:
    """Inverse of caption(): parse a caption (any attributes may be missing). Raises ValueError."""
    normalized = " ".join(text.lower().replace("centre", "center").strip().rstrip(".").split())
    background = None
    match = _BACKGROUND_RE.match(normalized)
    if match:
        normalized, background = match.group("rest"), match.group("background")
    objects = []
    for part in normalized.split(" and "):
        obj = _OBJECT_RE.match(part)
        if obj is None:
            raise ValueError(f"cannot parse object phrase {part!r} in prompt {text!r}")
        position = obj.group("position")
        objects.append(
            ShapeSpec(obj.group("color"), obj.group("shape"), _PHRASE_TO_POSITION.get(position), obj.group("size"))
        )
    if not 1 <= len(objects) <= 2:
        raise ValueError(f"expected one or two objects in prompt {text!r}")
    return SceneSpec(tuple(objects), background)


# ----------------------------------------------------------------------------- scene sampling / split


def _attribute_tuples(spec: SceneSpec) -> list[tuple]:
    return [(o.color, o.shape, o.position, o.size, spec.background) for o in spec.objects]


def _random_object(rng: random.Random, position: str, used_colors: set[str]) -> ShapeSpec:
    color = rng.choice([c for c in OBJECT_COLORS if c not in used_colors])
    return ShapeSpec(color, rng.choice(SHAPES), position, rng.choice(SIZES))


def _random_background(rng: random.Random, object_colors: set[str]) -> str:
    return rng.choice([c for c in BACKGROUND_COLORS if c not in object_colors])


def random_scene(rng: random.Random, two_objects: bool | None = None) -> SceneSpec:
    """Any complete scene (held-out combinations included). Two objects form a left/right or top/bottom pair."""
    if two_objects is None:
        two_objects = rng.random() < TWO_OBJECT_PROBABILITY
    positions = rng.choice(PAIR_LAYOUTS) if two_objects else (rng.choice(POSITIONS),)
    objects: list[ShapeSpec] = []
    for position in positions:
        objects.append(_random_object(rng, position, {o.color for o in objects}))
    return SceneSpec(tuple(objects), _random_background(rng, {o.color for o in objects}))


def held_out_scenes() -> list[SceneSpec]:
    """The fixed evaluation set: 48 single-object scenes (balanced positions, shapes, sizes) + 8 pairs."""
    rng = random.Random(HELD_OUT_SEED)
    scenes: list[SceneSpec] = []
    seen: set[tuple] = set()
    colors = list(OBJECT_COLORS)
    i = 0
    while len(scenes) < HELD_OUT_SINGLE:
        obj = ShapeSpec(colors[rng.randrange(len(colors))], SHAPES[i % 3], POSITIONS[i % 5], SIZES[i % 2])
        scene = SceneSpec((obj,), _random_background(rng, {obj.color}))
        if _attribute_tuples(scene)[0] not in seen:
            seen.add(_attribute_tuples(scene)[0])
            scenes.append(scene)
            i += 1
    for j in range(HELD_OUT_PAIRS):
        objects: list[ShapeSpec] = []
        for position in PAIR_LAYOUTS[j % 2]:
            objects.append(_random_object(rng, position, {o.color for o in objects}))
        scenes.append(SceneSpec(tuple(objects), _random_background(rng, {o.color for o in objects})))
    return scenes


def is_held_out(spec: SceneSpec, held_out: list[SceneSpec] | None = None) -> bool:
    """True if the scene is a held-out pair, or any of its objects repeats a held-out single-object combination."""
    held_out = held_out_scenes() if held_out is None else held_out
    held_singles = {_attribute_tuples(s)[0] for s in held_out if len(s.objects) == 1}
    held_pairs = {tuple(_attribute_tuples(s)) for s in held_out if len(s.objects) == 2}
    tuples = _attribute_tuples(spec)
    return tuple(tuples) in held_pairs or any(t in held_singles for t in tuples)


def training_scene(rng: random.Random, held_out: list[SceneSpec]) -> SceneSpec:
    """A random scene that is not held out (rejection sampling)."""
    while True:
        scene = random_scene(rng)
        if not is_held_out(scene, held_out):
            return scene


# ----------------------------------------------------------------------------- scoring


def _as_rgb_array(image) -> np.ndarray:
    array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if array.dtype != np.uint8:  # float images in [0, 1]
        array = np.clip(np.round(array.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an RGB image, got shape {array.shape}")
    return array


def classify_pixels(image) -> np.ndarray:
    """[H, W] index into SCORE_COLORS of the nearest named colour of every pixel (UNCLASSIFIED if none is near)."""
    pixels = _as_rgb_array(image).astype(np.int32)
    palette = np.array(list(SCORE_COLORS.values()), dtype=np.int32)
    distances = ((pixels[:, :, None, :] - palette[None, None, :, :]) ** 2).sum(axis=-1)
    labels = distances.argmin(axis=-1)
    labels[distances.min(axis=-1) > MAX_COLOR_DISTANCE**2] = UNCLASSIFIED
    return labels


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Boolean mask of the largest 4-connected component of `mask`."""
    height, width = mask.shape
    labels = np.zeros(mask.shape, dtype=np.int32)
    best_label, best_size, next_label = 0, 0, 0
    for start in zip(*np.nonzero(mask)):
        if labels[start]:
            continue
        next_label += 1
        labels[start] = next_label
        queue, size = deque([start]), 0
        while queue:
            y, x = queue.popleft()
            size += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = next_label
                    queue.append((ny, nx))
        if size > best_size:
            best_label, best_size = next_label, size
    return labels == best_label if best_label else np.zeros_like(mask)


def _classify_shape(component: np.ndarray) -> tuple[str, int]:
    """(shape by bounding-box fill ratio, bounding-box extent in px) of a component."""
    ys, xs = np.nonzero(component)
    height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    fill = component.sum() / float(height * width)
    shape = "triangle" if fill < TRIANGLE_MAX_FILL else "circle" if fill < CIRCLE_MAX_FILL else "square"
    return shape, int(max(height, width))


def _score_object(labels: np.ndarray, obj: ShapeSpec, anchors: dict) -> dict:
    color_index = list(SCORE_COLORS).index(obj.color)
    mask = labels == color_index
    count = int(mask.sum())
    result = {"color_ok": count >= MIN_COLOR_FRACTION * mask.size, "pos_ok": None, "shape_ok": None,
              "size_ok": None, "centroid_error": None}
    located = result["color_ok"]
    if obj.position is not None:
        ys, xs = np.nonzero(mask)
        if count:
            cx, cy = xs.mean(), ys.mean()
            nearest = min(anchors, key=lambda p: (anchors[p][0] - cx) ** 2 + (anchors[p][1] - cy) ** 2)
            ax, ay = anchors[obj.position]
            concentration = float((((xs - ax) ** 2 + (ys - ay) ** 2) <= CONCENTRATION_RADIUS**2).mean())
            result["centroid_error"] = float(math.hypot(cx - ax, cy - ay))
            located = located and nearest == obj.position and concentration >= MIN_CONCENTRATION
        else:
            located = False
        result["pos_ok"] = bool(located)
    shape, extent = _classify_shape(_largest_component(mask)) if located else (None, 0)
    result["shape_ok"] = bool(located and shape == obj.shape)
    if obj.size is not None:
        result["size_ok"] = bool(located and (extent >= SIZE_EXTENT_THRESHOLD) == (obj.size == "large"))
    return result


def _mean_or_none(values: list) -> float | None:
    present = [float(v) for v in values if v is not None]
    return sum(present) / len(present) if present else None


def score(image, spec: SceneSpec, anchors: dict[str, tuple[float, float]] = ANCHORS) -> dict:
    """Check an image (PIL, uint8 HxWx3, or float HxWx3 in [0, 1]) against a scene spec.

    Returns floats in [0, 1]: color_ok / pos_ok / shape_ok / size_ok are the fraction of objects
    passing (None when the spec lacks the attribute), bg_ok is 0/1 (None without a background),
    all_ok is 1 when the background and every object's colour and position pass. `objects` holds
    the per-object results (booleans and centroid_error in px). A position passes when its anchor is the
    nearest of `anchors` (pass ALL_ANCHORS for corner prompts) to the colour's centroid.
    """
    labels = classify_pixels(image)
    objects = [_score_object(labels, obj, anchors) for obj in spec.objects]
    bg_ok = None
    if spec.background is not None:
        ring = np.ones(labels.shape, dtype=bool)
        ring[BORDER_WIDTH:-BORDER_WIDTH, BORDER_WIDTH:-BORDER_WIDTH] = False
        bg_index = list(SCORE_COLORS).index(spec.background)
        bg_ok = float((labels[ring] == bg_index).mean() >= MIN_BORDER_FRACTION)
    checks = [bg_ok] + [o["color_ok"] for o in objects] + [o["pos_ok"] for o in objects]
    all_ok = float(all(bool(c) for c in checks if c is not None))
    result = {key: _mean_or_none([o[key] for o in objects]) for key in ("color_ok", "pos_ok", "shape_ok", "size_ok")}
    return {**result, "bg_ok": bg_ok, "all_ok": all_ok, "objects": objects}


def summarize(scores: list[dict]) -> dict:
    """Mean of every check over a list of score() results (None entries skipped)."""
    keys = ("color_ok", "pos_ok", "shape_ok", "size_ok", "bg_ok", "all_ok")
    summary = {key: _mean_or_none([s[key] for s in scores]) for key in keys}
    errors = sorted(o["centroid_error"] for s in scores for o in s["objects"] if o["centroid_error"] is not None)
    summary["median_centroid_error"] = errors[len(errors) // 2] if errors else None
    summary["count"] = len(scores)
    return summary
