"""The synthetic dataset's rendering: textured scene backgrounds and one glyph per object (each class a distinct
shape, colour and texture)."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from iagcn.extract.synth_scenes import C, SCENE_NAMES, SynthImage

SHAPES = ["circle", "square", "triangle", "diamond", "star", "cross", "ring", "hexagon", "crescent", "arrow"]
TEXTURES = ["solid", "stripes", "dots", "checker"]
COLOURS = np.array([  # 20 distinct colours, one per class
    [220, 40, 40], [40, 90, 220], [240, 200, 30], [30, 170, 80], [150, 60, 200],
    [250, 130, 20], [20, 200, 210], [230, 80, 170], [120, 80, 40], [240, 240, 240],
    [30, 30, 30], [130, 200, 40], [100, 20, 60], [255, 160, 160], [60, 60, 140],
    [200, 170, 120], [0, 110, 110], [170, 170, 170], [250, 90, 90], [90, 160, 255]], dtype=np.float32)
GLYPHS = [(SHAPES[c % 10], TEXTURES[(c % 10 + 2 * (c // 10)) % 4], COLOURS[c]) for c in range(C)]
"""Per class: (shape, texture, RGB). Classes c and c+10 share a shape and differ in colour and texture."""


def _unit_polygon(shape: str) -> list[np.ndarray]:
    """Polygons in [-1, 1]^2: the first is filled, later ones are cut out (rings, crescents)."""
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    circle = np.stack([np.cos(t), np.sin(t)], 1)

    def regular(k: int, phase: float = -np.pi / 2) -> np.ndarray:
        a = phase + np.arange(k) * 2 * np.pi / k
        return np.stack([np.cos(a), np.sin(a)], 1)

    if shape == "circle":
        return [circle]
    if shape == "square":
        return [np.array([[-0.85, -0.85], [0.85, -0.85], [0.85, 0.85], [-0.85, 0.85]])]
    if shape == "triangle":
        return [np.array([[0, -1], [1, 0.8], [-1, 0.8]])]
    if shape == "diamond":
        return [np.array([[0, -1], [0.75, 0], [0, 1], [-0.75, 0]])]
    if shape == "star":
        outer, inner = regular(5), 0.42 * regular(5, -np.pi / 2 + np.pi / 5)
        return [np.stack([outer, inner], 1).reshape(-1, 2)]
    if shape == "cross":
        a, b = 0.33, 1.0
        return [np.array([[-a, -b], [a, -b], [a, -a], [b, -a], [b, a], [a, a], [a, b], [-a, b], [-a, a], [-b, a],
                          [-b, -a], [-a, -a]])]
    if shape == "ring":
        return [circle, 0.55 * circle]
    if shape == "hexagon":
        return [regular(6, 0.0)]
    if shape == "crescent":
        return [circle, 0.85 * circle + np.array([0.45, -0.2])]
    if shape == "arrow":
        return [np.array([[-1, -0.3], [0.1, -0.3], [0.1, -0.8], [1, 0], [0.1, 0.8], [0.1, 0.3], [-1, 0.3]])]
    raise ValueError(shape)


UNIT_POLYGONS = {s: _unit_polygon(s) for s in SHAPES}


def _texture(rng: np.random.Generator, w: int, h: int, texture: str, colour: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 fill of one glyph: base colour, its pattern in a darker shade, shading and grain."""
    base = np.clip(colour + rng.normal(0, 10, 3), 0, 255).astype(np.float32)           # (3,)
    dark = base * 0.4 + 20                                                              # (3,)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)                                        # (h, w)
    period = max(4.0, min(w, h) / rng.uniform(4.0, 6.0))
    theta = rng.uniform(0, np.pi)
    if texture == "solid":
        pattern = np.zeros((h, w), np.float32)
    elif texture == "stripes":
        pattern = (np.sin(2 * np.pi * (x * np.cos(theta) + y * np.sin(theta)) / period) > 0).astype(np.float32)
    elif texture == "dots":
        dx, dy = (x % period) - period / 2, (y % period) - period / 2
        pattern = ((dx * dx + dy * dy) < (period / 3.2) ** 2).astype(np.float32)
    else:  # checker
        pattern = ((np.floor(x / period) + np.floor(y / period)) % 2).astype(np.float32)
    fill = base[None, None] * (1 - pattern[..., None]) + dark[None, None] * pattern[..., None]  # (h, w, 3)
    shade = 0.8 + 0.35 * ((x * np.cos(theta + 1) + y * np.sin(theta + 1)) / max(w, h) + 0.5)    # (h, w)
    fill = fill * np.clip(shade, 0.6, 1.2)[..., None] + rng.normal(0, 6, (h, w, 1)).astype(np.float32)
    return np.clip(fill, 0, 255).astype(np.uint8)


def _smooth_noise(rng: np.random.Generator, W: int, H: int, cells: int) -> np.ndarray:
    """(H, W) float32 in [0, 1]: random values on a coarse grid, bicubically upsampled."""
    grid = (rng.random((cells, cells)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(grid, "L").resize((W, H), Image.BICUBIC), np.float32) / 255.0


SCENE_COLOURS = {  # (upper colour, lower colour) of each scene's background, RGB
    "street": ([150, 160, 175], [85, 85, 90]),
    "indoor": ([205, 185, 150], [120, 85, 60]),
    "countryside": ([150, 195, 235], [70, 140, 50]),
    "waterside": ([170, 210, 240], [40, 90, 150]),
}


def render_background(rng: np.random.Generator, W: int, H: int, scene: int) -> np.ndarray:
    """(H, W, 3) float32 textured background of a scene: two regions split at a jittered horizon,
    low-frequency blotches, a scene-specific pattern (lane marks, wallpaper, grass, waves) and grain."""
    name = SCENE_NAMES[scene]
    top, bottom = (np.array(c, np.float32) + rng.normal(0, 12, 3) for c in SCENE_COLOURS[name])
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)                                        # (H, W)
    horizon = H * rng.uniform(0.35, 0.6) + 6 * np.sin(x / W * rng.uniform(2, 6) + rng.uniform(0, 6))  # (H, W)
    lower = 1 / (1 + np.exp(-(y - horizon) / 3.0))                                      # (H, W) soft split
    img = top * (1 - lower[..., None]) + bottom * lower[..., None]                      # (H, W, 3)
    img *= (0.8 + 0.4 * _smooth_noise(rng, W, H, 5))[..., None]                         # blotches
    if name == "street":      # dashed lane marks on the road
        lane = (np.abs(y - (horizon + (H - horizon) * 0.55)) < 2.5) & ((x + rng.uniform(0, 40)) % 40 < 22)
        img[lane] = 230
    elif name == "indoor":    # striped wallpaper above the floor
        img *= (1 + 0.08 * np.sign(np.sin(2 * np.pi * x / rng.uniform(14, 26))) * (1 - lower))[..., None]
    elif name == "countryside":  # grass grain
        img *= (1 + 0.25 * lower * (rng.random((H, W)) - 0.5))[..., None]
    else:                     # waves on the water
        img *= (1 + 0.12 * lower * np.sin(2 * np.pi * (y / rng.uniform(6, 10) + 0.3 * np.sin(x / 17))))[..., None]
    img += rng.normal(0, 5, (H, W, 1)).astype(np.float32)                               # grain
    return img


def render_image(rng: np.random.Generator, image: SynthImage) -> Image.Image:
    """Pixels of one image: background, then glyphs from the largest to the smallest."""
    W, H = image.width, image.height
    canvas = Image.fromarray(np.clip(render_background(rng, W, H, image.scene), 0, 255).astype(np.uint8), "RGB")
    by_area = sorted(image.objects, key=lambda o: -(o.box[2] - o.box[0]) * (o.box[3] - o.box[1]))
    for o in by_area:
        x0, y0, x1, y1 = o.box
        w, h = x1 - x0, y1 - y0
        shape, texture, colour = GLYPHS[o.cls]
        mask = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(mask)
        rot = np.array([[np.cos(o.angle), -np.sin(o.angle)], [np.sin(o.angle), np.cos(o.angle)]])
        for k, poly in enumerate(UNIT_POLYGONS[shape]):
            pts = (poly @ rot.T) * np.array([w / 2 - 0.5, h / 2 - 0.5]) + np.array([w / 2 - 0.5, h / 2 - 0.5])
            draw.polygon([tuple(p) for p in pts.tolist()], fill=255 if k == 0 else 0)
        canvas.paste(Image.fromarray(_texture(rng, w, h, texture, colour), "RGB"), (x0, y0), mask)
    return canvas
