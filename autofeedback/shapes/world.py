"""The shapes world: a palette, a vocabulary, a renderer that keeps its ground truth.

A scene is 1-4 shapes of one kind and one color on a flat background of another color, the
setting of Lee et al.'s count / color / background prompts ("two red circles on a blue background").
Everything here is pure numpy + PIL, so it runs anywhere and fast.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# Well-separated in RGB so that an exact checker can read them back (min pairwise distance ~ 150).
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 220),
    "yellow": (245, 215, 30),
    "purple": (140, 40, 190),
    "white": (250, 250, 250),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COUNTS: tuple[int, ...] = (1, 2, 3, 4)
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
WORD_NUMBERS = {v: k for k, v in NUMBER_WORDS.items()}
IMAGE_SIZE = 32


@dataclasses.dataclass(frozen=True)
class Scene:
    """What a prompt asks for, and what a rendered image holds."""

    count: int
    color: str
    shape: str
    background: str

    def __post_init__(self) -> None:
        if self.count not in COUNTS:
            raise ValueError(f"count must be one of {COUNTS}, got {self.count!r}")
        for field, value, allowed in (
            ("color", self.color, PALETTE),
            ("background", self.background, PALETTE),
            ("shape", self.shape, SHAPES),
        ):
            if value not in allowed:
                raise ValueError(f"{field} must be one of {sorted(allowed)}, got {value!r}")
        if self.color == self.background:
            raise ValueError(f"color and background must differ, both are {self.color!r}")

    @property
    def prompt(self) -> str:
        noun = self.shape if self.count == 1 else self.shape + "s"
        return f"{NUMBER_WORDS[self.count]} {self.color} {noun} on a {self.background} background"

    def metadata(self) -> dict:
        return dataclasses.asdict(self)


def parse_prompt(prompt: str) -> Scene:
    """Inverse of Scene.prompt: 'two red circles on a blue background' -> Scene."""
    words = prompt.strip().lower().rstrip(".").split()
    if len(words) != 7 or words[3:5] != ["on", "a"] or words[6] != "background":
        raise ValueError(f"not a shapes-world prompt: {prompt!r}")
    shape = words[2][:-1] if words[2].endswith("s") else words[2]
    if words[0] not in WORD_NUMBERS:
        raise ValueError(f"not a shapes-world count word: {words[0]!r} in {prompt!r}")
    return Scene(count=WORD_NUMBERS[words[0]], color=words[1], shape=shape, background=words[5])


def all_scenes() -> list[Scene]:
    return [
        Scene(n, c, s, b)
        for n in COUNTS
        for c in PALETTE
        for s in SHAPES
        for b in PALETTE
        if b != c
    ]


def _place(rng: np.random.Generator, count: int, size: int) -> list[tuple[float, float, float]]:
    """Non-overlapping (cx, cy, half-extent) boxes with a gap, so shapes never touch."""
    for _attempt in range(1000):
        boxes: list[tuple[float, float, float]] = []
        for _ in range(count):
            for _try in range(200):
                h = rng.uniform(0.11, 0.16) * size  # half-extent: 3.5-5 px at 32 px
                cx, cy = rng.uniform(h + 1, size - h - 1, size=2)
                gap = 2.5
                if all(max(abs(cx - x), abs(cy - y)) > h + r + gap for x, y, r in boxes):
                    boxes.append((cx, cy, h))
                    break
            else:
                break
        if len(boxes) == count:
            return boxes
    raise RuntimeError(f"could not place {count} shapes in {size}px")  # pragma: no cover


def render(scene: Scene, seed: int, size: int = IMAGE_SIZE, supersample: int = 4) -> Image.Image:
    """Draw the scene, anti-aliased by supersampling. Same (scene, seed, size) -> same pixels."""
    rng = np.random.default_rng(seed)
    big = size * supersample
    img = Image.new("RGB", (big, big), PALETTE[scene.background])
    draw = ImageDraw.Draw(img)
    fill = PALETTE[scene.color]
    for cx, cy, h in _place(rng, scene.count, size):
        cx, cy, h = cx * supersample, cy * supersample, h * supersample
        if scene.shape == "circle":
            draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=fill)
        elif scene.shape == "square":
            s = h * 0.9  # a square of the same area class as the circle
            draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
        else:  # upright isosceles triangle, base = height
            draw.polygon([(cx, cy - h), (cx - h, cy + h), (cx + h, cy + h)], fill=fill)
    return img.resize((size, size), Image.Resampling.BOX)


def degrade(img: Image.Image, rng: np.random.Generator, blur: float | None = None,
            noise: float | None = None, jitter: float | None = None) -> Image.Image:
    """Blur + per-pixel noise + a global color shift: what a small diffusion model's samples look like."""
    blur = rng.uniform(0.0, 0.8) if blur is None else blur
    noise = rng.uniform(0.0, 10.0) if noise is None else noise
    jitter = rng.uniform(0.0, 15.0) if jitter is None else jitter
    if blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    arr = np.asarray(img, dtype=np.float32)
    arr = arr + rng.normal(0.0, noise, size=arr.shape) + rng.uniform(-jitter, jitter, size=(1, 1, 3))
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))


def palette_array() -> tuple[list[str], np.ndarray]:
    names = list(PALETTE)
    return names, np.array([PALETTE[n] for n in names], dtype=np.float32)


def color_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(((np.asarray(a, np.float32) - np.asarray(b, np.float32)) ** 2).sum(-1))


__all__ = [
    "PALETTE", "SHAPES", "COUNTS", "NUMBER_WORDS", "IMAGE_SIZE", "Scene", "parse_prompt",
    "all_scenes", "render", "degrade", "palette_array", "color_distance",
]
