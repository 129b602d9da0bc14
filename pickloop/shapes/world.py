"""The shapes world: captioned scenes of flat shapes, drawn deterministically.

A scene is a background colour and one or two objects. One object sits at one of
five places; two objects always sit side by side (the first on the left). A caption
names every attribute unless it is left open ("a red circle" leaves size, place and
background open), which gives a simulated rater's taste room to act.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (245, 220, 40),
    "purple": (140, 50, 180),
    "orange": (250, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom", "center")
PAIR_POSITIONS = ("left", "right")  # two objects always stand side by side

WORLD_SIZE = 64  # pixels; all geometry below is in this frame and scaled by render()
# Half-extent in pixels: a small shape spans 18 px (4.5 latent cells at the VAE's
# factor 4) so a triangle keeps its corners; a large one spans 28 px, and two large
# ones side by side keep a 6 px gap.
HALF_EXTENT = {"small": 9, "large": 14}
# Centre of each place, (x, y) in pixels, y down.
CENTERS = {
    "left": (15, 32), "right": (49, 32), "top": (32, 15), "bottom": (32, 49), "center": (32, 32),
}
ATTRIBUTES = ("background", "color", "shape", "size", "position")
PHRASES = {
    "left": "on the left", "right": "on the right", "top": "at the top",
    "bottom": "at the bottom", "center": "in the center",
}
HELDOUT_SHARE = 10  # one prompt in HELDOUT_SHARE is held out, chosen by a hash of its text


@dataclass(frozen=True)
class Shape:
    """One flat object: kind in SHAPES, color in COLORS, size in SIZES, position in POSITIONS."""

    kind: str
    color: str
    size: str
    position: str


@dataclass(frozen=True)
class Scene:
    """A background colour name and one or two objects (two: left then right)."""

    background: str
    objects: tuple[Shape, ...] = field(default_factory=tuple)


def sample_scene(rng: random.Random, two_share: float = 0.25) -> Scene:
    """Draw a scene; object colours always differ from the background's."""
    background = rng.choice(list(COLORS))
    palette = [c for c in COLORS if c != background]
    if rng.random() < two_share:
        return Scene(background, tuple(
            Shape(rng.choice(SHAPES), rng.choice(palette), rng.choice(SIZES), pos) for pos in PAIR_POSITIONS
        ))
    shape = Shape(rng.choice(SHAPES), rng.choice(palette), rng.choice(SIZES), rng.choice(POSITIONS))
    return Scene(background, (shape,))


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _object_phrase(shape: Shape, open: Iterable[str], with_position: bool) -> str:
    open = set(open)
    words = [w for attr, w in (("size", shape.size), ("color", shape.color)) if attr not in open]
    words.append("shape" if "shape" in open else shape.kind)
    phrase = _article(words[0]) + " " + " ".join(words)
    if with_position and "position" not in open:
        phrase += " " + PHRASES[shape.position]
    return phrase


def caption(scene: Scene, open: Iterable[str] = ()) -> str:
    """Describe a scene, leaving the attributes named in `open` unsaid.

    Example: "a large red circle on the left on a blue background"; two objects:
    "a small red circle and a large blue square on a green background" (left, right).
    """
    open = set(open)
    unknown = open - set(ATTRIBUTES)
    if unknown:
        raise ValueError(f"unknown attributes {sorted(unknown)}; choose from {ATTRIBUTES}")
    if len(scene.objects) == 1:
        text = _object_phrase(scene.objects[0], open, with_position=True)
    else:
        text = " and ".join(_object_phrase(s, open, with_position=False) for s in scene.objects)
    if "background" not in open:
        text += f" on {_article(scene.background)} {scene.background} background"
    return text


def _triangle(cx: float, cy: float, h: float) -> list[tuple[float, float]]:
    # Upward isosceles triangle whose bounding box is centred at (cx, cy), side 2h.
    return [(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)]


def render(scene: Scene, size: int = 64) -> Image.Image:
    """Draw a scene as an RGB image of size x size pixels; deterministic, no antialiasing."""
    supersample = 4  # draw large and shrink so edges are smooth and identical every time
    s = size * supersample / WORLD_SIZE
    image = Image.new("RGB", (size * supersample,) * 2, COLORS[scene.background])
    draw = ImageDraw.Draw(image)
    for shape in scene.objects:
        cx, cy = CENTERS[shape.position]
        h = HALF_EXTENT[shape.size]
        fill = COLORS[shape.color]
        if shape.kind == "circle":
            draw.ellipse([(cx - h) * s, (cy - h) * s, (cx + h) * s, (cy + h) * s], fill=fill)
        elif shape.kind == "square":
            q = h * 0.85  # a square of half-side h would look larger than the circle
            draw.rectangle([(cx - q) * s, (cy - q) * s, (cx + q) * s, (cy + q) * s], fill=fill)
        else:
            draw.polygon([(x * s, y * s) for x, y in _triangle(cx, cy, h)], fill=fill)
    return image.resize((size, size), Image.Resampling.BOX)


_SIZE_WORDS, _COLOR_WORDS, _SHAPE_WORDS = set(SIZES), set(COLORS), set(SHAPES)
_PLACE_WORDS = {"left": "left", "right": "right", "top": "top", "bottom": "bottom", "center": "center"}


def parse_prompt(text: str) -> dict:
    """The attributes a caption fixes.

    Returns {"background": str?, "objects": [{"color"?, "shape"?, "size"?, "position"?}, ...]};
    keys that the prompt leaves open are absent. Two objects get positions left, right.
    """
    text = text.lower().strip().rstrip(".")
    out: dict = {}
    if text.endswith(" background") and " on a" in text:
        head, _, tail = text.rpartition(" on a")
        bg = tail[: -len(" background")].strip().removeprefix("n ")
        if bg in COLORS:
            out["background"] = bg
            text = head
    parts = [p for p in text.split(" and ")]
    objects = []
    for part in parts:
        words = part.replace(",", " ").split()
        obj: dict = {}
        for i, w in enumerate(words):
            if w in _SIZE_WORDS:
                obj["size"] = w
            elif w in _COLOR_WORDS:
                obj["color"] = w
            elif w in _SHAPE_WORDS:
                obj["shape"] = w
            elif w in _PLACE_WORDS and i > 0 and words[i - 1] == "the":
                obj["position"] = w
        objects.append(obj)
    if len(objects) == 2:
        for obj, pos in zip(objects, PAIR_POSITIONS):
            obj["position"] = pos
    out["objects"] = objects
    return out


def is_heldout(prompt: str) -> bool:
    """Whether a prompt belongs to the fixed held-out split (stable across versions)."""
    return int(hashlib.sha1(prompt.encode()).hexdigest(), 16) % HELDOUT_SHARE == 0


def random_open(rng: random.Random, scene: Scene, open_share: float) -> tuple[str, ...]:
    """Choose attributes to leave open: with probability open_share, one or two of them."""
    if rng.random() >= open_share:
        return ()
    choices = list(ATTRIBUTES) if len(scene.objects) == 1 else [a for a in ATTRIBUTES if a != "position"]
    return tuple(rng.sample(choices, rng.choice((1, 2))))


def prompt_pool(split: str = "train", n: int | None = None, open_share: float = 0.3,
                two_share: float = 0.25, seed: int = 0) -> list[str]:
    """A fixed list of distinct prompts from one split ("train" or "heldout").

    The split is decided by a hash of each prompt's text, so a prompt never moves
    between splits. n defaults to 500 prompts. The same arguments give the same list.
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    n = 500 if n is None else n
    rng = random.Random(f"pool-{seed}-{open_share}-{two_share}")
    want_heldout = split == "heldout"
    seen: set[str] = set()
    out: list[str] = []
    for _ in range(200 * n + 10_000):
        scene = sample_scene(rng, two_share)
        text = caption(scene, random_open(rng, scene, open_share))
        if text in seen or is_heldout(text) != want_heldout:
            continue
        seen.add(text)
        out.append(text)
        if len(out) == n:
            break
    return out


def sample_training_pair(seed: int, open_share: float = 0.3, two_share: float = 0.25,
                         size: int = 64) -> tuple[Image.Image, str]:
    """One (image, caption) pair for training, never with a held-out caption."""
    rng = random.Random(seed)
    while True:
        scene = sample_scene(rng, two_share)
        text = caption(scene, random_open(rng, scene, open_share))
        if not is_heldout(text):
            return render(scene, size), text


def scene_from_prompt(prompt: str, rng: random.Random) -> Scene:
    """A scene that satisfies a prompt, its open attributes drawn at random."""
    fixed = parse_prompt(prompt)
    bg = fixed.get("background")
    used = {o.get("color") for o in fixed["objects"]}
    if bg is None:
        bg = rng.choice([c for c in COLORS if c not in used])
    palette = [c for c in COLORS if c != bg]
    objs = []
    for o in fixed["objects"]:
        objs.append(Shape(o.get("shape") or rng.choice(SHAPES), o.get("color") or rng.choice(palette),
                          o.get("size") or rng.choice(SIZES), o.get("position") or rng.choice(POSITIONS)))
    return Scene(bg, tuple(objs))


def vocabulary() -> list[str]:
    """Every word a caption can use, for building the tokenizer offline."""
    words = set(COLORS) | set(SHAPES) | set(SIZES) | set(POSITIONS)
    words |= {"a", "an", "and", "on", "at", "in", "the", "background", "shape"}
    return sorted(words)


def captions_for(scenes: Sequence[Scene]) -> list[str]:
    """Full captions (nothing open) for a list of scenes."""
    return [caption(s) for s in scenes]
