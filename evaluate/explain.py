"""`iagcn explain`: the paper's two per-image figures for one cached image of a trained run.

* Fig. 1 (``fig1_lcm_<id>.png``): the image-dependent LCM A_F = A_S ⊙ A_I (Eq. 1, before normalisation) next to
  the statistical LCM A_S, as the run's head computes them for that image (``.npz`` holds the matrices drawn).
* Fig. 3 (``fig3_rois_<id>.png``): the image with its valid ROI boxes (from the cache) coloured by their
  variational weight z (Eq. 7-9; eval mode, z = z_mu), its labels and top-3 predictions written under it
  (``.npz`` holds boxes and weights).

``<id>`` is the image id when it is a plain lower-case name, else a readable form of it plus a hash of the raw id
(:func:`file_stem`): one file name per image id.

Presets without an image-dependent LCM (resnet, mlgcn, comsco, ...) have no Fig. 1, presets without Var_Inf no
Fig. 3; the command says so instead of drawing something else. ``explain.json`` records the image's labels,
predicted probabilities and which figures were written.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from iagcn.errors import UserError
from iagcn.extract.images import IMAGE_SUFFIXES
from iagcn.fsutil import write_json_atomic


def file_stem(image_id: str) -> str:
    """The part of a figure's file name that names the image, one per image id: the id itself when it is a plain
    lower-case name without an image suffix (``[a-z0-9_.-]``, e.g. VOC's ``000208``); otherwise the id without an
    image suffix, folders joined by ``_``, other characters replaced, plus ``+`` and 8 hex digits of its sha256
    (``img/000208.jpg`` -> ``img_000208+1b2c...``). The hash keeps ids that read alike apart (``img.jpg`` and
    ``img.png``, ``a/b.jpg`` and ``a_b.jpg``, ``A`` and ``a`` on a case-insensitive disk): their figures would
    otherwise overwrite each other. A plain name never holds ``+``, so it never equals a hashed one."""
    import hashlib

    stem = image_id.replace("\\", "/").lstrip("./")
    base, dot, suffix = stem.rpartition(".")
    if dot and f".{suffix.lower()}" in IMAGE_SUFFIXES + (".jpe",):
        stem = base
    elif re.fullmatch(r"[a-z0-9_.-]{1,80}", image_id) and image_id.strip("._-") == image_id:
        return image_id                                    # a plain name without an image suffix: itself
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("_")[:80] or "image"
    return f"{stem}+{hashlib.sha256(image_id.encode('utf-8')).hexdigest()[:8]}"


def find_image_in_root(root: Path, image_id: str) -> Path | None:
    """``root/<id>``, ``root/<id>.<ext>``, ``root/JPEGImages/<id>.<ext>``, else the first ``<id>.<ext>`` below root."""
    candidates = [root / image_id] + [root / f"{image_id}{s}" for s in IMAGE_SUFFIXES] + \
        [root / "JPEGImages" / f"{image_id}{s}" for s in IMAGE_SUFFIXES]
    for c in candidates:
        if c.is_file():
            return c
    name = Path(image_id).name
    for s in ("",) + IMAGE_SUFFIXES:
        for hit in root.rglob(f"{name}{s}"):
            if hit.is_file():
                return hit
    return None


def find_image(cache_attrs: dict[str, Any], image_id: str, *, image_root: str | os.PathLike | None) -> Path:
    """The image file of ``image_id``: under ``--image-root`` when given, else through the dataset reader and the
    dataset root recorded in the cache's extract_config."""
    if image_root is not None:
        root = Path(image_root)
        if not root.is_dir():
            raise UserError(f"--image-root {root}: not a folder")
        hit = find_image_in_root(root, image_id)
        if hit is None:
            raise UserError(f"--image-root {root}: no image file for id {image_id!r} (tried <id>.<ext>, "
                            "JPEGImages/<id>.<ext> and a recursive search); pass the folder holding the images")
        return hit
    cfg = cache_attrs.get("extract_config") or {}
    root = cfg.get("root")
    if not root or not Path(root).is_dir():
        raise UserError(f"the cache records dataset root {root!r}, which is not here; pass --image-root DIR")
    try:
        from iagcn.extract.datasets import load_dataset

        split = cfg.get("split", cache_attrs.get("split"))
        options: dict[str, Any] = {"strict": False}
        if cfg.get("dataset") == "csv":
            split = cfg.get("csv") or split
        ds = load_dataset(cfg.get("dataset", cache_attrs.get("dataset")), Path(root), split, **options)
        if image_id in ds.image_ids:
            path = Path(ds.image_paths[ds.image_ids.index(image_id)])
            if path.is_file():
                return path
    except (UserError, ImportError, OSError, KeyError, TypeError, ValueError):
        pass  # fall back to searching the root
    hit = find_image_in_root(Path(root), image_id)
    if hit is None:
        raise UserError(f"no image file for id {image_id!r} under the recorded dataset root {root}; "
                        "pass --image-root DIR")
    return hit


def explain(run_dir: str | os.PathLike, cache_path: str | os.PathLike, image_id: str, out: str | os.PathLike, *,
            image_root: str | os.PathLike | None = None, which: str = "best", device: str = "auto",
            top_rois: int | None = None) -> dict[str, Any]:
    """Write Fig. 1 / Fig. 3 (+ their .npz data) and explain.json for one image; return the explain.json record.

    ``top_rois``: Fig. 3 draws only that many ROIs, those of largest weight z (None: every valid ROI)."""
    from iagcn.cache.format import FeatureCache
    from iagcn.metrics import sigmoid
    from iagcn.evaluate.figures import plot_lcm_pair, plot_roi_weights
    from iagcn.train.inference import explain_image, load_run

    run = load_run(run_dir, which=which)
    cache_path = Path(cache_path)
    with FeatureCache(cache_path) as c:
        attrs = dict(c.attrs)
        ids = c.image_ids()
        run.check_cache(c, what="explain an image of")
    if image_id not in ids:
        sample = ", ".join(ids[:5])
        raise UserError(f"--image-id {image_id}: not in cache {cache_path} ({len(ids)} images, e.g. {sample})")
    info = explain_image(run.model, cache_path, image_id, device=device, num_rois=run.config.num_rois)
    out = Path(out)
    stem = file_stem(image_id)
    written: dict[str, str] = {}
    notes: list[str] = []
    names = run.class_names
    logits = np.asarray(info["logits"], dtype=np.float64)  # (C,)
    probs = sigmoid(logits)  # (C,)
    labels = np.asarray(info["labels"])
    present = [names[c] for c in np.flatnonzero(labels == 1)]
    title = f"{image_id} ({', '.join(present) or 'no labels'})"
    order = np.argsort(-probs, kind="stable")
    predicted = [(names[c], float(probs[c])) for c in order[:3]]
    caption = (f"labels: {', '.join(present) or 'none'}"
               + (f" (ignored: {', '.join(names[c] for c in np.flatnonzero(labels == -1))})" if (labels == -1).any() else "")
               + "\npredicted: " + ", ".join(f"{n} {p:.2f}" for n, p in predicted))
    if info.get("A_F") is not None:
        written["fig1"] = str(plot_lcm_pair(info["A_F"], info["A_S"], names, out / f"fig1_lcm_{stem}.png",
                                            title=f"Fig. 1: {title}"))
    else:
        notes.append(f"preset {run.config.preset} has no image-dependent LCM A_F: Fig. 1 not drawn")
    z = info.get("z")
    if z is not None:
        from iagcn.extract.images import load_image_rgb

        image_path = find_image(attrs, image_id, image_root=image_root)
        image = load_image_rgb(image_path)
        written["fig3"] = str(plot_roi_weights(image, info["boxes"], z, info["box_valid"],
                                               out / f"fig3_rois_{stem}.png",
                                               title=f"Fig. 3: {image_id}, " + (
                                                   f"the {top_rois} ROIs of largest z" if top_rois else
                                                   "ROIs coloured by z"), caption=caption, top_k=top_rois))
        written["image"] = str(image_path)
    else:
        notes.append(f"preset {run.config.preset} has no variational ROI weights z: Fig. 3 not drawn")
    if not written:
        raise UserError(f"run {run_dir} (preset {run.config.preset}) has neither A_F nor z; explain needs an "
                        "IA-GCN preset with ID_LCM or Var_Inf (idlcm, idlcm-vi, iagcn)")
    record = {"run": str(Path(run_dir).resolve()), "checkpoint": which, "epoch": run.epoch,
              "preset": run.config.preset, "cache": str(cache_path.resolve()), "image_id": image_id,
              "labels": present, "ignored": [names[c] for c in np.flatnonzero(labels == -1)],
              "probabilities": {names[c]: round(float(probs[c]), 6) for c in order},
              "figures": written, "notes": notes}
    write_json_atomic(out / f"explain_{stem}.json", record, what="explain record")
    return record
