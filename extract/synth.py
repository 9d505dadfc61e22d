"""A deterministic synthetic multi-label dataset in the real VOC or COCO on-disk layout (the offline default).

Generative model (see docs/synth.md): every image is a *scene* (street, indoor, countryside,
waterside) with its own textured background and class priors (scene-level co-occurrence), holding
1-5 glyph objects of the 20 VOC classes (each class a distinct shape, colour and texture). Pair rules
make co-occurrence depend on the image: a bicycle, motorbike or horse is ridden by a person in only
some images, a dining table comes with chairs in most, cats and dogs rarely share a room, and an
out-of-context object appears now and then. Objects smaller than a threshold are marked difficult.

Each image is drawn from its own generator seeded with (seed, split, index), so the output is
byte-identical for a seed whatever the worker count, and a split's images do not depend on the
other split's size.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
from PIL import Image, ImageDraw

from iagcn.extract.datasets import VOC_CLASSES
from iagcn.errors import UserError
from iagcn.fsutil import TMP_MARK, check_writable_dir, exclusive_lock, interrupt_hint, is_disk_full, tmp_name_for

GENERATOR_VERSION = 1
CLASS_INDEX = {c: i for i, c in enumerate(VOC_CLASSES)}
C = len(VOC_CLASSES)

# ---------------------------------------------------------------------------------------------------
# the label model: scenes, priors, pair rules

SCENE_NAMES = ["street", "indoor", "countryside", "waterside"]
SCENE_WEIGHTS = np.array([0.30, 0.30, 0.22, 0.18])
SCENE_PRIORS: dict[str, dict[str, float]] = {   # P(class drawn | scene) before the pair rules
    "street": {"person": 0.50, "car": 0.55, "bus": 0.25, "bicycle": 0.30, "motorbike": 0.25, "train": 0.08,
               "dog": 0.08},
    "indoor": {"chair": 0.45, "diningtable": 0.30, "sofa": 0.30, "tvmonitor": 0.35, "pottedplant": 0.30,
               "bottle": 0.35, "cat": 0.25, "dog": 0.20, "person": 0.30},
    "countryside": {"cow": 0.35, "horse": 0.30, "sheep": 0.35, "dog": 0.25, "bird": 0.30, "person": 0.20},
    "waterside": {"boat": 0.55, "aeroplane": 0.35, "bird": 0.35, "person": 0.20, "train": 0.10},
}
BASE_PRIOR = 0.02          # P(class drawn | scene) for classes the scene does not list
RIDEABLE = ("bicycle", "motorbike", "horse")
P_RIDDEN = 0.5             # a rideable object carries a person in this fraction of its instances
P_TABLE_CHAIRS = 0.7       # a dining table comes with a chair beside it
P_PETS_TOGETHER = 0.15     # cat and dog both drawn: both kept only this often
P_OUT_OF_CONTEXT = 0.10    # one extra object of a class the scene does not list
P_SECOND_INSTANCE = 0.20   # a drawn class gets a second instance (room permitting)
MAX_OBJECTS = 5
SIZE_RANGE = (0.10, 0.45)  # object size / min(W, H), log-uniform
DIFFICULT_BELOW = 0.13     # objects smaller than this fraction of min(W, H) are "difficult"

PRIORS = np.full((len(SCENE_NAMES), C), BASE_PRIOR)  # (S, C)
for _s, _name in enumerate(SCENE_NAMES):
    for _cls, _p in SCENE_PRIORS[_name].items():
        PRIORS[_s, CLASS_INDEX[_cls]] = _p


@dataclass(frozen=True)
class SynthObject:
    cls: int                              # class index into VOC_CLASSES
    box: tuple[int, int, int, int]        # x0, y0, x1, y1 (pixels, x1/y1 exclusive)
    angle: float                          # glyph rotation, radians
    difficult: bool                       # smaller than DIFFICULT_BELOW


@dataclass(frozen=True)
class SynthImage:
    width: int
    height: int
    scene: int
    objects: tuple[SynthObject, ...]


def sample_units(rng: np.random.Generator, scene: int) -> list[list[str]]:
    """Which objects the image holds, as units placed together: [cls] or [vehicle, 'person'] (ridden) or
    ['diningtable', 'chair']."""
    drawn = rng.random(C) < PRIORS[scene]                                      # (C,) independent draws
    cat, dog = CLASS_INDEX["cat"], CLASS_INDEX["dog"]
    if drawn[cat] and drawn[dog] and rng.random() >= P_PETS_TOGETHER:          # pets rarely together
        drawn[cat if rng.random() < 0.5 else dog] = False
    if rng.random() < P_OUT_OF_CONTEXT:                                        # instance-level exception
        foreign = np.flatnonzero(PRIORS[scene] <= BASE_PRIOR)
        drawn[rng.choice(foreign)] = True
    if not drawn.any():
        drawn[rng.choice(C, p=PRIORS[scene] / PRIORS[scene].sum())] = True
    units: list[list[str]] = []
    for c in np.flatnonzero(drawn):
        name = VOC_CLASSES[c]
        copies = 2 if rng.random() < P_SECOND_INSTANCE else 1
        for _ in range(copies):
            if name in RIDEABLE and rng.random() < P_RIDDEN:
                units.append([name, "person"])                                 # person rides it
            elif name == "diningtable" and rng.random() < P_TABLE_CHAIRS:
                units.append([name, "chair"])
            else:
                units.append([name])
    order = rng.permutation(len(units))
    kept, count = [], 0
    for k in order:                                                            # at most MAX_OBJECTS objects
        if count + len(units[k]) <= MAX_OBJECTS:
            kept.append(units[k])
            count += len(units[k])
    return kept


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def sample_image(rng: np.random.Generator) -> SynthImage:
    """Scene, size and object layout of one image (the whole label model; no pixels)."""
    W, H = int(rng.integers(272, 321)), int(rng.integers(224, 289))
    short = min(W, H)
    scene = int(rng.choice(len(SCENE_NAMES), p=SCENE_WEIGHTS))
    objects: list[SynthObject] = []
    placed: list[tuple[float, ...]] = []

    def make(cls: str, x0: float, y0: float, w: float, h: float) -> SynthObject:
        box = (int(max(0, round(x0))), int(max(0, round(y0))), int(min(W, round(x0 + w))), int(min(H, round(y0 + h))))
        size = min(w, h) ** 0.5 * max(w, h) ** 0.5
        return SynthObject(cls=CLASS_INDEX[cls], box=box, angle=float(rng.uniform(-0.35, 0.35)),
                           difficult=bool(size < DIFFICULT_BELOW * short))

    for unit in sample_units(rng, scene):
        lo, hi = SIZE_RANGE
        if len(unit) > 1:
            lo = max(lo, 0.2)                                                  # room for the partner
        s = short * float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        aspect = float(np.exp(rng.uniform(-0.22, 0.22)))
        w, h = s * aspect, s / aspect
        best = None
        for _ in range(8):                                                     # avoid heavy overlap
            x0, y0 = rng.uniform(0, W - w), rng.uniform(0, H - h)
            if unit[-1] == "person" and len(unit) > 1:
                y0 = rng.uniform(min(0.55 * h, H - h), H - h)                  # room for the rider above
            box = (x0, y0, x0 + w, y0 + h)
            overlap = max((_iou(box, p) for p in placed), default=0.0)
            if best is None or overlap < best[0]:
                best = (overlap, x0, y0)
            if overlap < 0.3:
                break
        _, x0, y0 = best
        objects.append(make(unit[0], x0, y0, w, h))
        placed.append((x0, y0, x0 + w, y0 + h))
        if len(unit) > 1 and unit[1] == "person":                              # rider: on top, centred
            pw, ph = 0.55 * w, 0.9 * h
            objects.append(make("person", x0 + (w - pw) / 2, y0 + 0.35 * h - ph, pw, ph))
        elif len(unit) > 1:                                                    # chair beside the table
            cw, ch = 0.6 * w, 0.75 * h
            cx = x0 - 0.8 * cw if (rng.random() < 0.5 and x0 > 0.5 * cw) or x0 + w + cw > W else x0 + w - 0.2 * cw
            objects.append(make("chair", cx, y0 + h - ch, cw, ch))
    objects = [o for o in objects if o.box[2] - o.box[0] >= 4 and o.box[3] - o.box[1] >= 4]
    return SynthImage(width=W, height=H, scene=scene, objects=tuple(objects))


def image_labels(image: SynthImage, *, difficult_as: int = -1) -> np.ndarray:
    """(C,) int8: 1 if a non-difficult object of the class, ``difficult_as`` if only difficult ones, else 0."""
    out = np.zeros(C, dtype=np.int8)
    for o in image.objects:
        if not o.difficult:
            out[o.cls] = 1
        elif out[o.cls] == 0:
            out[o.cls] = difficult_as
    return out


# ---------------------------------------------------------------------------------------------------
# rendering: textured backgrounds and glyphs

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


def generate_one(seed: int, split_code: int, index: int) -> tuple[bytes, SynthImage]:
    """JPEG bytes and layout of image ``index`` of a split, from its own generator (seed, split, index)."""
    import io

    rng = np.random.default_rng([seed, split_code, index])
    image = sample_image(rng)
    buf = io.BytesIO()
    render_image(rng, image).save(buf, format="JPEG", quality=90)
    return buf.getvalue(), image


def _generate_star(args: tuple[int, int, int]) -> tuple[bytes, SynthImage]:
    return generate_one(*args)


# ---------------------------------------------------------------------------------------------------
# writing the dataset in the VOC or COCO layout


def _voc_xml(image_id: str, im: SynthImage) -> str:
    objs = "".join(
        f"  <object>\n    <name>{VOC_CLASSES[o.cls]}</name>\n    <pose>Unspecified</pose>\n"
        f"    <truncated>0</truncated>\n    <difficult>{int(o.difficult)}</difficult>\n"
        f"    <bndbox>\n      <xmin>{o.box[0] + 1}</xmin>\n      <ymin>{o.box[1] + 1}</ymin>\n"
        f"      <xmax>{o.box[2]}</xmax>\n      <ymax>{o.box[3]}</ymax>\n    </bndbox>\n  </object>\n"
        for o in im.objects)
    return (f"<annotation>\n  <folder>VOC2007</folder>\n  <filename>{image_id}.jpg</filename>\n"
            f"  <source>\n    <database>iagcn synthetic scenes (scene: {SCENE_NAMES[im.scene]})</database>\n"
            f"  </source>\n  <size>\n    <width>{im.width}</width>\n    <height>{im.height}</height>\n"
            f"    <depth>3</depth>\n  </size>\n  <segmented>0</segmented>\n{objs}</annotation>\n")


def _iter_images(seed: int, counts: list[int], workers: int, progress: bool):
    """Yield (split_code, index, jpeg, layout) in order, generated by ``workers`` processes."""
    jobs = [(seed, s, i) for s, n in enumerate(counts) for i in range(n)]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(jobs), desc="synth", unit="img")
    if workers > 1:
        import multiprocessing as mp
        pool = mp.get_context("fork").Pool(workers)
        results = pool.imap(_generate_star, jobs, chunksize=8)
    else:
        pool, results = None, map(_generate_star, jobs)
    try:
        for (_, s, i), (jpeg, layout) in zip(jobs, results):
            if bar is not None:
                bar.update(1)
            yield s, i, jpeg, layout
    finally:
        if pool is not None:
            pool.terminate()
        if bar is not None:
            bar.close()


def _write_voc(tmp: Path, *, n_train: int, n_test: int, seed: int, workers: int, progress: bool) -> Path:
    root = tmp / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ids: dict[str, list[str]] = {"trainval": [], "test": []}
    labels: dict[str, list[np.ndarray]] = {"trainval": [], "test": []}
    for s, i, jpeg, layout in _iter_images(seed, [n_train, n_test], workers, progress):
        split = ("trainval", "test")[s]
        image_id = f"{(i if s == 0 else n_train + i) + 1:06d}"                 # VOC numbering: 000001, ...
        (root / "JPEGImages" / f"{image_id}.jpg").write_bytes(jpeg)
        (root / "Annotations" / f"{image_id}.xml").write_text(_voc_xml(image_id, layout))
        ids[split].append(image_id)
        labels[split].append(image_labels(layout))
    splits = {"trainval": ids["trainval"], "train": ids["trainval"][0::2], "val": ids["trainval"][1::2],
              "test": ids["test"]}
    split_labels = {"trainval": labels["trainval"], "train": labels["trainval"][0::2],
                    "val": labels["trainval"][1::2], "test": labels["test"]}
    main = root / "ImageSets" / "Main"
    for split, split_ids in splits.items():
        (main / f"{split}.txt").write_text("".join(f"{i}\n" for i in split_ids))
        # per-class lists in the devkit's convention: 1 positive, -1 negative, 0 difficult only
        mat = np.stack(split_labels[split]) if split_ids else np.zeros((0, C), np.int8)  # (n, C)
        for c, cls in enumerate(VOC_CLASSES):
            devkit = np.where(mat[:, c] == 1, 1, np.where(mat[:, c] == -1, 0, -1))
            (main / f"{cls}_{split}.txt").write_text("".join(f"{i} {v:2d}\n" for i, v in zip(split_ids, devkit)))
    return root


def _write_coco(tmp: Path, *, n_train: int, n_test: int, seed: int, workers: int, progress: bool) -> Path:
    split_names = ["train2014", "val2014"]
    for split in split_names:
        (tmp / split).mkdir(parents=True, exist_ok=True)
    (tmp / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": c + 1, "name": name, "supercategory": "synthetic"} for c, name in enumerate(VOC_CLASSES)]
    docs = {s: {"info": {"description": "iagcn synthetic scenes", "version": GENERATOR_VERSION, "seed": seed},
                "licenses": [], "images": [], "annotations": [], "categories": categories} for s in split_names}
    ann_id = 0
    for s, i, jpeg, layout in _iter_images(seed, [n_train, n_test], workers, progress):
        split = split_names[s]
        image_id = (i if s == 0 else n_train + i) + 1
        file_name = f"COCO_{split}_{image_id:012d}.jpg"
        (tmp / split / file_name).write_bytes(jpeg)
        docs[split]["images"].append({"id": image_id, "file_name": file_name, "width": layout.width,
                                      "height": layout.height, "scene": SCENE_NAMES[layout.scene]})
        for o in layout.objects:
            ann_id += 1
            x0, y0, x1, y1 = o.box
            docs[split]["annotations"].append({"id": ann_id, "image_id": image_id, "category_id": o.cls + 1,
                                               "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                                               "iscrowd": 0})
    for split in split_names:
        (tmp / "annotations" / f"instances_{split}.json").write_text(json.dumps(docs[split], separators=(",", ":")))
    return tmp


def dataset_root(out: Path, fmt: str) -> Path:
    """The folder to pass as ``iagcn extract --root`` for a dataset written to ``out``."""
    return out / "VOCdevkit" / "VOC2007" if fmt == "voc" else out


def write_synth(out: str | os.PathLike, *, fmt: str = "voc", n_train: int = 800, n_test: int = 400, seed: int = 0,
                workers: int = 1, overwrite: bool = False, progress: bool = False) -> tuple[Path, bool]:
    """Write the synthetic dataset under ``out`` (built in a temporary folder, then renamed into place).

    Returns (dataset root, written); ``written`` is False when ``out`` already holds the same dataset.
    """
    if fmt not in ("voc", "coco"):
        raise UserError(f"--format {fmt!r} is not known; choose voc or coco")
    if n_train < 1 or n_test < 1:
        raise UserError("--train and --test must be at least 1")
    out = Path(out)
    manifest = {"generator": "iagcn synth", "version": GENERATOR_VERSION, "format": fmt, "train": n_train,
                "test": n_test, "seed": seed}
    if out.exists():
        previous = out / "synth.json"
        if previous.is_file() and json.loads(previous.read_text()) == manifest and not overwrite:
            return dataset_root(out, fmt), False
        if any(out.iterdir()) and not overwrite:
            raise UserError(f"--out {out} exists and is not empty (or holds a different synthetic dataset); "
                            "pass --overwrite to replace it or choose another folder")
    check_writable_dir(out.parent, what=f"the dataset {out.name}")
    hint = f"interrupted: nothing was written to {out} (it is built in a temporary folder); rerun the same command"
    with exclusive_lock(out, what="synthetic dataset"), interrupt_hint(lambda: hint):
        for stale in out.parent.glob(f".{out.name}{TMP_MARK}*"):   # left by a killed run (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = tmp_name_for(out)
        try:
            tmp.mkdir()
            writer = _write_voc if fmt == "voc" else _write_coco
            writer(tmp, n_train=n_train, n_test=n_test, seed=seed, workers=workers, progress=progress)
            (tmp / "synth.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            if out.exists():
                trash = tmp_name_for(out)
                os.replace(out, trash)
                os.replace(tmp, out)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.replace(tmp, out)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, Exception) and is_disk_full(e):
                raise UserError(f"disk full while writing the dataset {out} (the partial copy was removed); "
                                f"free space and rerun") from e
            raise
    return dataset_root(out, fmt), True


@click.command("synth")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Folder to write the dataset to.")
@click.option("--format", "fmt", type=click.Choice(["voc", "coco"]), default="voc", show_default=True,
              help="On-disk layout: VOCdevkit/VOC2007 or COCO 2014 (train2014/val2014).")
@click.option("--train", "n_train", type=int, default=800, show_default=True,
              help="Images in the training split (VOC trainval, split in half into train/val; COCO train2014).")
@click.option("--test", "n_test", type=int, default=400, show_default=True,
              help="Images in the test split (VOC test; COCO val2014).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed: the same seed gives byte-identical files.")
@click.option("--workers", type=int, default=1, show_default=True, help="Processes drawing images (output unchanged).")
@click.option("--overwrite", is_flag=True, help="Replace a different dataset already in --out.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def synth_command(out: str, fmt: str, n_train: int, n_test: int, seed: int, workers: int, overwrite: bool,
                  quiet: bool) -> None:
    """Write a deterministic synthetic multi-label dataset (20 VOC classes as glyphs on textured scenes)."""
    start = time.perf_counter()
    root, written = write_synth(out, fmt=fmt, n_train=n_train, n_test=n_test, seed=seed, workers=max(1, workers),
                                overwrite=overwrite, progress=not quiet)
    splits = ("trainval", "test") if fmt == "voc" else ("train2014", "val2014")
    if written:
        seconds = time.perf_counter() - start
        click.echo(f"wrote {n_train + n_test} images to {root} in {seconds:.1f}s "
                   f"({(n_train + n_test) / seconds:.0f} images/s)")
    else:
        click.echo(f"{root} already holds this synthetic dataset (same format, sizes and seed); nothing to do")
    click.echo(f"splits: {', '.join(splits)}; next: iagcn extract --dataset {fmt} --root {root} --split {splits[0]} ...")
