"""The exact checker: read an image back into (count, color, shape, background) and judge it.

How it reads an image:
1. Background = the median color of the border ring, refined by the pixels close to it; named by the
   nearest palette color (or unreadable when no palette color is close).
2. Foreground = pixels far from the background; 8-connected components; specks below a minimum
   area are noise.
3. Per component, a soft coverage map t = projection of each pixel on the background -> shape-color
   line (0 = background, 1 = shape). Sums of t are sub-pixel accurate even for blurred, noisy,
   anti-aliased shapes: area, widest row, tallest column.
4. An upright triangle's mass sits low: the row profile's skewness is ~ -0.57 (0 for circles and
   squares). Otherwise fill = area / (widest row x tallest column): square ~1.0, circle ~pi/4.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
from PIL import Image
from scipy import ndimage

from .world import PALETTE, Scene, palette_array

_NAMES, _RGB = palette_array()
_PAIRWISE = np.sqrt(((_RGB[:, None] - _RGB[None]) ** 2).sum(-1))
# A color is read as a palette color when it is closer to it than half the smallest palette gap.
READABLE_DISTANCE = float(_PAIRWISE[_PAIRWISE > 0].min() / 2)
FOREGROUND_DISTANCE = 55.0
MIN_AREA = 6.0
SQUARE_FILL = 0.88
TRIANGLE_SKEW = -0.3
CONCEPTS = ("count", "color", "shape", "background")
FILL_SOFTNESS = 0.015  # graded credit: how soft the square/circle boundary is (in fill)
SKEW_SOFTNESS = 0.05   # ... and the triangle boundary (in skewness)


def _sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-x)))


@dataclasses.dataclass
class Component:
    color: str | None
    shape: str
    area: float
    fill: float
    skew: float
    rgb: tuple[float, float, float]


@dataclasses.dataclass
class Reading:
    background: str | None
    components: list[Component]

    @property
    def count(self) -> int:
        return len(self.components)

    @property
    def readable(self) -> bool:
        return self.background is not None and all(c.color is not None for c in self.components)

    def majority(self, attr: str) -> str | None:
        values = [getattr(c, attr) for c in self.components]
        if not values:
            return None
        (value, n), = Counter(values).most_common(1)
        return value if n == len(values) else "mixed"


@dataclasses.dataclass
class Verdict:
    reading: Reading
    expected: Scene
    correct: dict[str, bool]

    @property
    def aligned(self) -> bool:
        return all(self.correct.values())

    @property
    def score(self) -> float:
        return sum(self.correct.values()) / len(self.correct)

    def credits(self) -> dict[str, float]:
        """Graded per-concept credit in [0, 1], with the continuous terms behind each verdict: the count error
        (1 off = 0.25, 2 off = 0), the share of shapes of the right color, and per shape a soft margin on the
        square's fill (SQUARE_FILL +- FILL_SOFTNESS) and the triangle's skew. A rounded square with fill 0.86
        gets some credit, a round one almost none: graded feedback can tell them apart, a binary label can't."""
        comps, want = self.reading.components, self.expected
        if not comps:
            return {"count": 0.0, "color": 0.0, "shape": 0.0, "background": float(self.correct["background"])}
        off = abs(len(comps) - want.count)
        shape = []
        for c in comps:
            tri = _sigmoid((TRIANGLE_SKEW - c.skew) / SKEW_SOFTNESS)
            sq = _sigmoid((c.fill - SQUARE_FILL) / FILL_SOFTNESS)
            shape.append({"triangle": tri, "square": (1 - tri) * sq, "circle": (1 - tri) * (1 - sq)}[want.shape])
        return {"count": 1.0 if off == 0 else 0.25 if off == 1 else 0.0,
                "color": sum(c.color == want.color for c in comps) / len(comps),
                "shape": float(np.mean(shape)),
                "background": float(self.correct["background"])}

    @property
    def graded(self) -> float:
        """Mean of the graded credits: 1.0 for an aligned image far from every threshold."""
        return float(np.mean(list(self.credits().values())))

    def observed(self) -> dict[str, str | None]:
        r = self.reading
        return {
            "count": str(r.count),
            "color": r.majority("color"),
            "shape": r.majority("shape"),
            "background": r.background,
        }


def nearest_color(rgb: np.ndarray) -> tuple[str | None, float]:
    d = np.sqrt(((_RGB - np.asarray(rgb, np.float32)) ** 2).sum(-1))
    i = int(d.argmin())
    return (_NAMES[i] if d[i] < READABLE_DISTANCE else None), float(d[i])


def _as_array(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {arr.shape}")
    return arr


def _skewness(weights: np.ndarray) -> float:
    y = np.arange(len(weights), dtype=np.float64)
    total = weights.sum()
    if total <= 0:
        return 0.0
    mean = (weights * y).sum() / total
    var = (weights * (y - mean) ** 2).sum() / total
    if var <= 1e-9:
        return 0.0
    return float((weights * (y - mean) ** 3).sum() / total / var**1.5)


def read(image: Image.Image | np.ndarray) -> Reading:
    arr = _as_array(image)
    # 1. Background.
    ring = np.concatenate([arr[0], arr[-1], arr[1:-1, 0], arr[1:-1, -1]])
    bg = np.median(ring, axis=0)
    dist_bg = np.sqrt(((arr - bg) ** 2).sum(-1))
    near = dist_bg < FOREGROUND_DISTANCE
    if near.any():
        bg = np.median(arr[near], axis=0)
        dist_bg = np.sqrt(((arr - bg) ** 2).sum(-1))
    bg_name, _ = nearest_color(bg)
    # 2. Foreground components.
    labels, n = ndimage.label(dist_bg > FOREGROUND_DISTANCE, structure=np.ones((3, 3), bool))
    components = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        mask = labels[box] == index
        ys, xs = box
        # 3. Soft coverage in the component's box grown by one pixel.
        y0, y1 = max(ys.start - 1, 0), min(ys.stop + 1, arr.shape[0])
        x0, x1 = max(xs.start - 1, 0), min(xs.stop + 1, arr.shape[1])
        pixels = arr[box][mask]
        strong = dist_bg[box][mask]
        core = pixels[strong >= np.quantile(strong, 0.5)]
        rgb = np.median(core, axis=0)
        direction = rgb - bg
        norm2 = float((direction**2).sum())
        if norm2 < 1.0:
            continue
        own = np.isin(labels[y0:y1, x0:x1], (0, index))  # don't count a neighbour's pixels
        t = ((arr[y0:y1, x0:x1] - bg) @ direction) / norm2 * own
        area = float(t.sum())
        if area < MIN_AREA:
            continue
        widest = float(t.sum(axis=1).max())
        tallest = float(t.sum(axis=0).max())
        fill = area / max(widest * tallest, 1e-6)
        skew = _skewness(np.clip(t, 0, None).sum(axis=1))
        # 4. Shape from skew and fill.
        if skew <= TRIANGLE_SKEW:
            shape = "triangle"
        else:
            shape = "square" if fill >= SQUARE_FILL else "circle"
        color, _ = nearest_color(rgb)
        components.append(Component(color, shape, area, fill, skew, tuple(float(v) for v in rgb)))
    return Reading(bg_name, components)


def check(image: Image.Image | np.ndarray, expected: Scene) -> Verdict:
    reading = read(image)
    comps = reading.components
    correct = {
        "count": reading.count == expected.count,
        "color": bool(comps) and all(c.color == expected.color for c in comps),
        "shape": bool(comps) and all(c.shape == expected.shape for c in comps),
        "background": reading.background == expected.background,
    }
    return Verdict(reading, expected, correct)


__all__ = ["read", "check", "Reading", "Verdict", "Component", "CONCEPTS", "nearest_color", "PALETTE"]
