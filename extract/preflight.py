"""Stage one's pre-flight: read a split and find every bad annotation and image before any work is done."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from iagcn.classes import parse_class_names
from iagcn.errors import UserError
from iagcn.extract.config import ExtractConfig


def load_checked_split(cfg: ExtractConfig, *, progress: bool = True):
    """Read the split and pre-flight it: every bad annotation and image at once.

    Refuses (one UserError listing all problems) unless ``cfg.skip_bad``; with it, drops the bad images and
    returns their ids. Returns (DatasetSplit, skipped ids).
    """
    from iagcn.extract.datasets import load_dataset, raise_on_problems
    from iagcn.extract.images import find_bad_images

    options: dict[str, Any] = {"strict": False}  # collect annotation problems instead of stopping at the first file
    split = cfg.split
    if cfg.dataset == "csv":
        split = cfg.csv or cfg.split
        if cfg.classes is not None:
            options["class_names"] = parse_class_names(cfg.classes, option="--classes")
    elif cfg.csv is not None or cfg.classes is not None:
        raise UserError(f"--csv/--classes apply to --dataset csv only, not {cfg.dataset}; drop them")
    if cfg.dataset == "coco":
        options["keep_empty"] = cfg.keep_empty
    elif cfg.keep_empty:
        raise UserError(f"--keep-empty applies to --dataset coco only, not {cfg.dataset}; drop it")
    ds = load_dataset(cfg.dataset, Path(cfg.root), split, **options)
    bad = find_bad_images(ds, progress=progress)
    problems = [*ds.problems, *bad.values()]  # == extract.datasets.preflight(ds)
    if problems and not cfg.skip_bad:
        raise_on_problems(problems, what=f"{cfg.dataset} {cfg.root} split {split}")
    if problems:
        ds = ds.without(bad)
        print(f"warning: --skip-bad: leaving out {len(ds.bad_ids)} image(s): {', '.join(ds.bad_ids[:20])}"
              + (" ..." if len(ds.bad_ids) > 20 else ""), file=sys.stderr)
    return ds, list(ds.bad_ids)
