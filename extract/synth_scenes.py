"""The synthetic dataset's label model: scenes, class priors, pair rules, object sizes (see docs/synth.md).

Every image is a *scene* (street, indoor, countryside, waterside) with its own class priors (scene-level
co-occurrence), holding 1-5 objects of the 20 VOC classes. Pair rules make co-occurrence depend on the image: a
bicycle, motorbike or horse is ridden by a person in only some images, a dining table comes with chairs in most,
cats and dogs rarely share a room, and an out-of-context object appears now and then. Objects smaller than a
threshold are marked difficult.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from iagcn.classes import VOC_CLASSES

CLASS_INDEX = {c: i for i, c in enumerate(VOC_CLASSES)}
C = len(VOC_CLASSES)

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
    if objects and all(o.difficult for o in objects):
        objects = _promote_largest(objects, W=W, H=H)
    return SynthImage(width=W, height=H, scene=scene, objects=tuple(objects))


def _promote_largest(objects: list[SynthObject], *, W: int, H: int) -> list[SynthObject]:
    """Every image keeps a non-difficult object, as in the VOC devkit (0 of 5,011 trainval images lack a positive
    label): the largest object grows about its centre to the difficulty threshold. No random draw, so the images
    that already have one are unchanged."""
    short = min(W, H)
    k = max(range(len(objects)),
            key=lambda i: (objects[i].box[2] - objects[i].box[0]) * (objects[i].box[3] - objects[i].box[1]))
    o = objects[k]
    w, h = o.box[2] - o.box[0], o.box[3] - o.box[1]
    scale = (DIFFICULT_BELOW * short + 1.0) / (min(w, h) ** 0.5 * max(w, h) ** 0.5)     # geometric-mean size
    nw, nh = min(W, int(np.ceil(w * scale))), min(H, int(np.ceil(h * scale)))
    cx, cy = (o.box[0] + o.box[2]) / 2, (o.box[1] + o.box[3]) / 2
    x0 = int(min(max(0, round(cx - nw / 2)), W - nw))
    y0 = int(min(max(0, round(cy - nh / 2)), H - nh))
    objects = list(objects)
    objects[k] = SynthObject(cls=o.cls, box=(x0, y0, x0 + nw, y0 + nh), angle=o.angle, difficult=False)
    return objects


def image_labels(image: SynthImage, *, difficult_as: int = -1) -> np.ndarray:
    """(C,) int8: 1 if a non-difficult object of the class, ``difficult_as`` if only difficult ones, else 0."""
    out = np.zeros(C, dtype=np.int8)
    for o in image.objects:
        if not o.difficult:
            out[o.cls] = 1
        elif out[o.cls] == 0:
            out[o.cls] = difficult_as
    return out
