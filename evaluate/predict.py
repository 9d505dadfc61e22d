"""`iagcn predict`: labels of new images with a trained run, running stage one on the fly.

1. The run's extraction record: the ``extract_config`` (backbone, weights, proposer, sizes, RoIAlign grid) and the
   weight hashes of the cache it was trained on (``config.json`` -> ``train_cache``; older runs: read from the
   train cache file itself).
2. The weights are checked *before* anything runs: the backbone's weight file must exist and its sha256 must equal
   the one recorded (likewise a proposer with weights), else a one-line error says which file and what to do.
3. The images go through :func:`extract.pipeline.extract_split` with exactly that config (batched; a progress bar
   for folders), into a temporary cache, then through the trained head (:func:`train.inference.predict_cache`); both
   on ``device`` (auto | cpu | cuda[:k], resolved once by :func:`iagcn.device.resolve_device`).
4. Per image: the labels whose probability sigmoid(logit) >= threshold (at most ``top_k``), with probabilities.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from iagcn.device import resolve_device
from iagcn.errors import UserError
from iagcn.extract.images import IMAGE_SUFFIXES
from iagcn.fsutil import sha256_file


@dataclass(frozen=True)
class ExtractionRecord:
    """What stage one must reproduce for a run: its train cache's extraction config and weight hashes."""

    extract_config: dict[str, Any]
    extract_config_hash: str | None
    backbone_weights_sha256: str | None
    proposer_weights_sha256: str | None
    source: str


def extraction_record(run_dir: str | os.PathLike) -> ExtractionRecord:
    """The extraction config recorded for a run (config.json's train_cache entry, else its train cache's attrs)."""
    run_dir = Path(run_dir)
    from iagcn.train import runfolder

    path = run_dir / runfolder.CONFIG
    tc = runfolder.read_record(run_dir)["train_cache"]
    tc = tc if isinstance(tc, dict) else {}
    if isinstance(tc.get("extract_config"), dict):
        return ExtractionRecord(tc["extract_config"], tc.get("extract_config_hash"),
                                tc.get("backbone_weights_sha256"), tc.get("proposer_weights_sha256"), str(path))
    cache_path = tc.get("path")
    if cache_path and Path(cache_path).exists():
        from iagcn.cache.format import FeatureCache

        with FeatureCache(cache_path) as c:
            a = c.attrs
            return ExtractionRecord(a["extract_config"], a.get("extract_config_hash"), a.get("backbone_weights_sha256"),
                                    a.get("proposer_weights_sha256"), str(cache_path))
    raise UserError(f"--run {run_dir}: config.json does not record the extraction config and the train cache "
                    f"{cache_path!r} is gone; predict needs one of them")


def backbone_weights_file(backbone: str, weights: str) -> Path | None:
    """The file a backbone loads for ``weights`` (None for random weights), without loading or downloading it."""
    if weights == "none":
        return None
    if weights != "imagenet":
        return Path(weights)
    if backbone == "efficientnet-lite0":
        from iagcn.extract.backbones import bundled_lite0_weights

        return bundled_lite0_weights()
    if backbone == "resnet101":
        import torch
        import torchvision

        url = torchvision.models.ResNet101_Weights.IMAGENET1K_V1.url
        return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    raise UserError(f"the run's extraction config names backbone {backbone!r}, which this iagcn does not know")


def check_weights(rec: ExtractionRecord) -> None:
    """Refuse unless the backbone (and proposer) weight files are there and hash to what the run recorded."""
    cfg = rec.extract_config
    backbone, weights = cfg.get("backbone"), cfg.get("weights", "imagenet")
    path = backbone_weights_file(backbone, weights)
    if path is None:
        sha = "none"
    else:
        if not path.is_file():
            raise UserError(f"backbone weights {path} ({backbone}, --weights {weights}) are missing; the run was "
                            f"trained on features from them: put that file back (sha256 "
                            f"{rec.backbone_weights_sha256}) before predicting")
        sha = sha256_file(path)
    if rec.backbone_weights_sha256 is not None and sha != rec.backbone_weights_sha256:
        raise UserError(f"backbone weights {path or 'none'}: sha256 {sha[:16]}... differs from the "
                        f"{str(rec.backbone_weights_sha256)[:16]}... recorded when the run's training cache was "
                        "extracted; use the same weight file (features from other weights do not fit the head)")
    pw = cfg.get("proposer_weights")
    if pw not in (None, "none", "coco", "zoo") and rec.proposer_weights_sha256 not in (None, "none"):
        p = Path(pw)
        if not p.is_file():
            raise UserError(f"proposer weights {p} are missing; put back the file the run's cache was extracted with")
        if sha256_file(p) != rec.proposer_weights_sha256:
            raise UserError(f"proposer weights {p}: sha256 differs from the one recorded for the run's cache; "
                            "use the same file")


def collect_images(inputs: Sequence[str | os.PathLike], *, skip_bad: bool = False, log=None) -> list[Path]:
    """Image files named directly, plus the images inside named folders (sorted, not recursive).

    An unreadable image, or a named file that does not exist, is refused (every one in one line) unless
    ``skip_bad`` (``--skip-bad``, as in ``iagcn extract``): then they are left out, named in one warning line, and
    only no usable image at all is refused. A folder without images is refused either way (a wrong path)."""
    from iagcn.extract.images import check_image

    files: list[Path] = []
    problems: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UserError(f"{p}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            files += found
        elif p.exists():
            files.append(p)
        elif skip_bad:
            problems.append(f"{p}: no such image")
        else:
            raise UserError(f"{p}: no such image or folder")
    bad = {f: why for f in files if (why := check_image(f)) is not None}
    problems += [f"{f}: {why}" for f, why in bad.items()]
    if problems and not skip_bad:
        raise UserError(f"{len(problems)} unusable image(s): " + "; ".join(problems[:5])
                        + (" ..." if len(problems) > 5 else "") + "; remove them from the arguments, or pass "
                        "--skip-bad to leave them out")
    files = [f for f in files if f not in bad]
    if problems:
        if not files:
            raise UserError(f"--skip-bad: none of the {len(problems)} image(s) is usable: " + "; ".join(problems[:5])
                            + (" ..." if len(problems) > 5 else ""))
        (log or (lambda m: print(m, file=sys.stderr)))(
            f"warning: --skip-bad: leaving out {len(problems)} image(s): " + "; ".join(problems[:20])
            + (" ..." if len(problems) > 20 else ""))
    return files


@dataclass
class Prediction:
    image: str
    labels: list[tuple[str, float]]      # predicted labels with probabilities, highest first
    probabilities: dict[str, float]      # every class


def decide_labels(probs: np.ndarray, class_names: Sequence[str], *, threshold: float,
                  top_k: int | None) -> list[tuple[str, float]]:
    """Labels with probability >= threshold, highest first, at most top_k of them."""
    order = np.argsort(-probs, kind="stable")  # (C,)
    chosen = [c for c in order if probs[c] >= threshold]
    if top_k:
        chosen = chosen[:top_k]
    return [(class_names[c], float(probs[c])) for c in chosen]


def predict_images(run_dir: str | os.PathLike, inputs: Sequence[str | os.PathLike], *, threshold: float = 0.5,
                   top_k: int | None = None, which: str = "best", device: str = "auto", workers: int | None = None,
                   progress: bool = True, log=None, skip_bad: bool = False) -> list[Prediction]:
    """Run stage one (the run's recorded extraction config) and the trained head on image files / folders
    (``skip_bad``: leave unusable images out, :func:`collect_images`)."""
    import dataclasses

    from iagcn.metrics import sigmoid
    from iagcn.extract.split import DatasetSplit
    from iagcn.extract.config import ExtractConfig
    from iagcn.extract.pipeline import extract_split
    from iagcn.configio import config_from_dict
    from iagcn.train.inference import load_run, predict_cache

    if not (0.0 < threshold < 1.0):
        raise UserError(f"--threshold {threshold}: must be a probability strictly between 0 and 1")
    if top_k is not None and top_k < 1:
        raise UserError(f"--top-k {top_k}: must be at least 1")
    log = log or (lambda m: print(m, file=sys.stderr))
    dev = resolve_device(device)
    run = load_run(run_dir, which=which)
    rec = extraction_record(run_dir)
    check_weights(rec)
    files = collect_images(inputs, skip_bad=skip_bad, log=log)
    fields = {f.name for f in dataclasses.fields(ExtractConfig)}
    recorded = {k: v for k, v in rec.extract_config.items() if k in fields}
    cfg = config_from_dict(ExtractConfig, recorded, source=f"{rec.source} extract_config")
    n_workers = (min(2, os.cpu_count() or 1) if len(files) > 4 else 0) if workers is None else workers
    cfg = dataclasses.replace(cfg, workers=n_workers, device=str(dev), shard=None, skip_bad=False)
    C = len(run.class_names)
    ds = DatasetSplit(name="predict", root=Path("."), split="predict", class_names=list(run.class_names),
                      image_ids=[str(f) for f in files], image_paths=list(files),
                      labels=np.zeros((len(files), C), dtype=np.int8))
    with tempfile.TemporaryDirectory(prefix="iagcn-predict-") as tmp:
        cache_path = Path(tmp) / "predict.h5"
        extract_split(ds, cfg, cache_path, label_embeddings=(np.zeros((C, 1), np.float32), "unused (predict)"),
                      progress=progress and len(files) > 1, log=log)
        from iagcn.cache.format import FeatureCache

        with FeatureCache(cache_path) as c:
            got = c.attrs.get("backbone_weights_sha256")
            if rec.backbone_weights_sha256 is not None and got != rec.backbone_weights_sha256:
                raise UserError(f"the backbone loaded weights with sha256 {str(got)[:16]}..., not the recorded "
                                f"{rec.backbone_weights_sha256[:16]}...; use the run's weight file")
            if c.feature_dim != run.meta["feature_dim"] or c.num_rois < run.meta["num_rois"] or \
                    (c.num_rois != run.meta["num_rois"] and run.config.num_rois is None):
                raise UserError(f"extracted features are (N={c.num_rois}, D={c.feature_dim}) but the run expects "
                                f"(N={run.meta['num_rois']}, D={run.meta['feature_dim']}); the recorded extraction "
                                "config does not match the run")
        out = predict_cache(run.model, cache_path, batch_size=256, device=dev,   # moves the model to dev
                            num_rois=run.config.num_rois)
    probs = sigmoid(np.asarray(out["scores"], dtype=np.float64))  # (n, C)
    preds = []
    for image, p in zip(out["image_ids"], probs):
        preds.append(Prediction(image=str(image), labels=decide_labels(p, run.class_names, threshold=threshold,
                                                                        top_k=top_k),
                                probabilities={n: float(v) for n, v in zip(run.class_names, p)}))
    return preds


def format_predictions(preds: Sequence[Prediction], *, fmt: str) -> str:
    """text: ``image: label 0.93, label 0.71``; json: a list of objects; csv: image,label,probability rows, one per
    predicted label, and ``image,,`` (empty label and probability) for an image with no label above the threshold."""
    if fmt == "json":
        return json.dumps([{"image": p.image, "labels": [{"label": n, "probability": round(v, 6)} for n, v in p.labels],
                            "probabilities": {k: round(v, 6) for k, v in p.probabilities.items()}}
                           for p in preds], indent=2)
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["image", "label", "probability"])
        for p in preds:
            for n, v in p.labels:
                w.writerow([p.image, n, f"{v:.6f}"])
            if not p.labels:                     # no label above the threshold: the image still gets its row
                w.writerow([p.image, "", ""])
        return buf.getvalue().rstrip("\n")
    return "\n".join(f"{p.image}: " + (", ".join(f"{n} {v:.3f}" for n, v in p.labels) or "(no label above threshold)")
                     for p in preds)
