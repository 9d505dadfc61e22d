"""A trained run's scores on a cache: the logits it saved (when they are for exactly these images) or the logits
its checkpoint computes (stage two's :func:`train.inference.predict_cache`), never retraining."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from iagcn.errors import UserError
from iagcn.evaluate.evaluation import EvalConfig
from iagcn.train import runfolder


@dataclass
class RunScores:
    """A trained run's logits on a cache, with what identifies it."""

    name: str
    run_dir: Path
    scores: np.ndarray            # (n, C) logits, rows in the cache's image order
    image_ids: list[str]
    class_names: list[str]
    seed: int | None
    preset: str | None
    source: str                   # "saved scores <file>" or "checkpoint <file>"


def score_run_on_cache(*, run_dir: Path | None, checkpoint: Path | None, cache_path: Path, config: EvalConfig,
                       progress: bool = False) -> RunScores:
    """Score every image of the cache with the run's (selected) checkpoint: logits (n, C) and image ids."""
    from iagcn.cache.format import FeatureCache
    from iagcn.train.inference import load_run_or_checkpoint, predict_cache

    run, ckpt_path = load_run_or_checkpoint(run_dir=run_dir, checkpoint=checkpoint, which=config.which)
    model, class_names = run.model, run.class_names
    with FeatureCache(cache_path) as c:
        run.check_cache(c)
    out = predict_cache(model, cache_path, batch_size=config.batch_size, device=config.device, progress=progress,
                        num_rois=run.config.num_rois)
    base = Path(run_dir) if run_dir is not None else Path(checkpoint).parent
    return RunScores(name=base.name, run_dir=base, scores=np.asarray(out["scores"], dtype=np.float64),
                     image_ids=[str(i) for i in out["image_ids"]], class_names=list(class_names),
                     seed=run.config.seed, preset=run.config.preset,       # what the checkpoint was trained with
                     source=f"checkpoint {ckpt_path}")


def run_scores_for_cache(run_dir: Path, cache_path: Path, *, config: EvalConfig, progress: bool = False) -> RunScores:
    """A run's logits on ``cache_path``: the scores it saved when they are for exactly these images (and the
    selected checkpoint), else computed from its checkpoint (never retraining)."""
    from iagcn.cache.format import FeatureCache

    run_dir = Path(run_dir)
    record = runfolder.read_record(run_dir)
    cfg = record.get("config", {})
    saved = runfolder.load_scores(run_dir) if config.which == "best" else None
    with FeatureCache(cache_path) as c:
        cache_ids, cache_classes = c.image_ids(), c.class_names
        cache_hash, cache_fingerprint = c.attrs.get("extract_config_hash"), c.fingerprint()
    recorded = record["eval_cache"] or {}
    if "fingerprint" in recorded:        # by content, as everywhere: a cache re-extracted in place is not the same
        same_cache = recorded["fingerprint"] == cache_fingerprint
    else:
        same_cache = recorded.get("extract_config_hash") == cache_hash and \
            Path(str(recorded.get("path", ""))).resolve() == Path(cache_path).resolve()
    if saved is not None and same_cache and sorted(saved[1]) == sorted(cache_ids):
        class_names = list(record.get("class_names") or cache_classes)
        if class_names != list(cache_classes):
            raise UserError(f"run {run_dir.name} was trained on {len(class_names)} classes that differ from cache "
                            f"{cache_path} ({len(cache_classes)} classes); evaluate on a cache of the same dataset")
        return RunScores(name=run_dir.name, run_dir=run_dir, scores=saved[0], image_ids=saved[1],
                         class_names=class_names, seed=cfg.get("seed"), preset=cfg.get("preset"),
                         source=f"saved scores in {run_dir}")
    return score_run_on_cache(run_dir=run_dir, checkpoint=None, cache_path=Path(cache_path), config=config,
                              progress=progress)

