"""A programmatic judge for the shapes world: what an image shows, read from its pixels.

The background is the colour most of the border shows; objects are the connected
regions that differ from it. Each region's colour is the nearest named colour to its
median pixel (specks of other colours dropped), its shape from the template (square,
circle, triangle) that best overlaps it within its bounding box, its size from its extent,
its position from its centre. All reads tolerate the blur of generated images.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from PIL import Image

from .world import ATTRIBUTES, COLORS, PAIR_POSITIONS, WORLD_SIZE, parse_prompt

_NAMES = list(COLORS)
_PALETTE = np.array([COLORS[c] for c in _NAMES], dtype=np.float32)  # (8, 3)
FOREGROUND_DISTANCE = 70.0  # RGB distance from the background above which a pixel is object
MIN_AREA = 12  # pixels (64x64 frame); smaller regions are noise, not objects
SIZE_SPLIT = 23.0  # pixels of extent between small (18) and large (28)
MAX_EXTENT = 38  # pixels; a region wider than this is two objects run together
CENTER_TOLERANCE = 7.5  # pixels the centre may stray from (32, 32) and still be "center"


@dataclass
class ObjectReading:
    """One object: named attributes plus continuous features (pixels in the 64x64 frame)."""

    color: str
    shape: str
    size: str
    position: str
    area: int  # pixels
    extent: float  # larger side of the bounding box, pixels
    center: tuple[float, float]  # (x, y), pixels
    mean_rgb: tuple[float, float, float]  # 0..255
    fill: float  # area / bounding-box area

    @property
    def warmth(self) -> float:
        """Red minus blue of the mean colour, in [-1, 1]; high for red/orange/yellow."""
        r, _, b = self.mean_rgb
        return (r - b) / 255.0

    @property
    def center_offset(self) -> float:
        """Distance of the centre from the image centre, in units of half the image (0..~1.4)."""
        half = WORLD_SIZE / 2
        return float(np.hypot(self.center[0] - half, self.center[1] - half) / half)


@dataclass
class Reading:
    """What the judge sees in one image."""

    background: str
    background_rgb: tuple[float, float, float]
    objects: list[ObjectReading] = field(default_factory=list)

    def contrast(self) -> float:
        """Mean RGB distance between each object and the background, over 441 (0..1); 0 if empty."""
        if not self.objects:
            return 0.0
        bg = np.array(self.background_rgb)
        return float(np.mean([np.linalg.norm(np.array(o.mean_rgb) - bg) for o in self.objects]) / 441.7)


def nearest_color(rgb: np.ndarray) -> str:
    """Name of the palette colour nearest to an RGB triple (0..255)."""
    return _NAMES[int(np.argmin(((_PALETTE - rgb) ** 2).sum(axis=1)))]


def _as_array(image: Image.Image) -> np.ndarray:
    image = image.convert("RGB")
    if image.size != (WORLD_SIZE, WORLD_SIZE):
        image = image.resize((WORLD_SIZE, WORLD_SIZE), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.float32)


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected regions of a boolean mask, each as an (n, 2) array of (y, x)."""
    seen = np.zeros_like(mask, dtype=bool)
    h, w = mask.shape
    regions = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        queue, pixels = deque([(y0, x0)]), []
        while queue:
            y, x = queue.popleft()
            pixels.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        regions.append(np.array(pixels))
    return regions


def _split_touching(regions: list[np.ndarray]) -> list[np.ndarray]:
    """Cut a region wider than any one shape at the middle column: two blurred neighbours."""
    out = []
    for region in regions:
        xs = region[:, 1]
        if xs.max() - xs.min() + 1 > MAX_EXTENT:
            mid = WORLD_SIZE // 2
            out += [r for r in (region[xs < mid], region[xs >= mid]) if len(r)]
        else:
            out.append(region)
    return out


def _dominant_colour_part(region: np.ndarray, px: np.ndarray, bg_rgb: np.ndarray) -> np.ndarray:
    """The pixels of a region closer to its median colour than to the background.

    Generated images put specks of other colours at an object's corners; left in, they
    stretch its bounding box and a square reads as a circle. Edge pixels that blend the
    object and the background are kept when they are more object than background.
    """
    rgb = px[region[:, 0], region[:, 1]]  # (n, 3)
    median = np.median(rgb, axis=0)
    keep = np.linalg.norm(rgb - median, axis=1) < np.linalg.norm(rgb - bg_rgb, axis=1)
    return region[keep]


def _classify_shape(region: np.ndarray, extent_w: float, extent_h: float) -> tuple[str, float]:
    """The shape whose template, fitted to the region's bounding box, overlaps it best (IoU).

    Templates: the full box (square), the inscribed ellipse (circle), and the apex-up
    triangle spanning the box (triangle). Matching whole masks tolerates the soft and
    rounded edges of generated images better than corner tests. Returns (shape, fill).
    """
    ys, xs = region[:, 0], region[:, 1]
    y0, x0 = ys.min(), xs.min()
    h, w = int(extent_h), int(extent_w)
    mask = np.zeros((h, w), dtype=bool)
    mask[ys - y0, xs - x0] = True
    gy, gx = np.mgrid[0:h, 0:w] + 0.5
    u, v = (gx - w / 2) / (w / 2), gy / h  # u in [-1, 1] across, v in [0, 1] down
    templates = {
        "square": np.ones_like(mask),
        "circle": u ** 2 + (2 * v - 1) ** 2 <= 1.0,
        "triangle": np.abs(u) <= v,
    }
    iou = {k: (mask & t).sum() / max((mask | t).sum(), 1) for k, t in templates.items()}
    return max(iou, key=iou.get), len(region) / max(extent_w * extent_h, 1.0)


def _position(cx: float, cy: float) -> str:
    dx, dy = cx - WORLD_SIZE / 2, cy - WORLD_SIZE / 2
    if max(abs(dx), abs(dy)) < CENTER_TOLERANCE:
        return "center"
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "top" if dy < 0 else "bottom"


def read(image: Image.Image) -> Reading:
    """Read background, objects (largest first by area, then ordered left to right)."""
    px = _as_array(image)
    border = np.concatenate([px[0], px[-1], px[:, 0], px[:, -1]])
    names = [nearest_color(p) for p in border]
    background = max(set(names), key=names.count)
    bg_pixels = border[np.array(names) == background]
    bg_rgb = np.median(bg_pixels, axis=0)
    mask = np.linalg.norm(px - bg_rgb, axis=2) > FOREGROUND_DISTANCE
    objects = []
    for region in _split_touching(_components(mask)):
        if len(region) < MIN_AREA:
            continue
        region = _dominant_colour_part(region, px, bg_rgb)
        if len(region) < MIN_AREA:
            continue
        ys, xs = region[:, 0], region[:, 1]
        w, h = float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)
        shape, fill = _classify_shape(region, w, h)
        rgb = np.median(px[ys, xs], axis=0)
        # Centre of the bounding box: the world places each shape's box centre on its spot.
        cx, cy = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2
        objects.append(ObjectReading(
            color=nearest_color(rgb), shape=shape, size="large" if max(w, h) > SIZE_SPLIT else "small",
            position=_position(cx, cy), area=len(region), extent=max(w, h), center=(float(cx), float(cy)),
            mean_rgb=tuple(float(v) for v in px[ys, xs].mean(axis=0)), fill=float(fill),
        ))
    objects = sorted(objects, key=lambda o: -o.area)[:2]
    objects.sort(key=lambda o: o.center[0])
    return Reading(background, tuple(float(v) for v in bg_rgb), objects)


def _match_objects(wanted: list[dict], seen: list[ObjectReading]) -> list[ObjectReading | None]:
    """Pair each prompted object with the object read at its place (two: left, right)."""
    if len(wanted) == 1:
        return [max(seen, key=lambda o: o.area) if seen else None]
    if len(seen) < 2:
        # One region where two were asked: it counts for the side it stands on.
        side = {o.position: o for o in seen if o.position in PAIR_POSITIONS}
        return [side.get(pos) for pos in PAIR_POSITIONS]
    return seen[:2]


def follows(prompt: str, image: Image.Image, reading: Reading | None = None) -> dict[str, bool]:
    """For each attribute the prompt fixes, whether the image shows it.

    Keys among ATTRIBUTES; an object attribute is true only if every prompted object has it.
    A missing object fails every object attribute the prompt fixes.
    """
    fixed = parse_prompt(prompt)
    reading = reading or read(image)
    out: dict[str, bool] = {}
    if "background" in fixed:
        out["background"] = reading.background == fixed["background"]
    matched = _match_objects(fixed["objects"], reading.objects)
    for attr in ("color", "shape", "size", "position"):
        asked = [(w, o) for w, o in zip(fixed["objects"], matched) if attr in w]
        if asked:
            out[attr] = all(o is not None and getattr(o, attr) == w[attr] for w, o in asked)
    if len(fixed["objects"]) == 2 and len(reading.objects) != 2:
        out["count"] = False
    return out


def follow_accuracy(prompts: Sequence[str], images: Sequence[Image.Image]) -> dict[str, float]:
    """Share of images right on each attribute (over the prompts that fix it), and overall.

    "overall" is the share of images right on every attribute their prompt fixes.
    """
    if len(prompts) != len(images):
        raise ValueError(f"{len(prompts)} prompts but {len(images)} images")
    hits: dict[str, list[bool]] = {a: [] for a in ATTRIBUTES}
    overall = []
    for prompt, image in zip(prompts, images):
        result = follows(prompt, image)
        for attr, ok in result.items():
            if attr in hits:
                hits[attr].append(ok)
        overall.append(all(result.values()))
    out = {a: float(np.mean(v)) for a, v in hits.items() if v}
    out["overall"] = float(np.mean(overall)) if overall else 0.0
    return out
