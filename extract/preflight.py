"""Stage one's pre-flight: read a split and find every bad annotation and image before any work is done."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from iagcn.errors import UserError
from iagcn.extract.config import ExtractConfig


def parse_classes(text: str | None) -> list[str] | None:
    """``--classes``: a file of names (one a line) or a comma-separated list; None: from the dataset."""
    if text is None:
        return None
    path = Path(text)
    from iagcn.validation import read_user_text, require_unique

    names = read_user_text(path, what="--classes").split("\n") if path.is_file() else text.split(",")
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise UserError(f"--classes {text}: no class names found; give a comma-separated list or a file of names")
    require_unique(names, what="class name", where=f"--classes {text}")
    return names


def load_checked_split(cfg: ExtractConfig, *, progress: bool = True):
    """Read the split and pre-flight it: every bad annotation and image at once.

    Refuses (one UserError listing all problems) unless ``cfg.skip_bad``; with it, drops the bad images and
    returns their ids. Returns (DatasetSplit, skipped ids).
    """
    from iagcn.extract.datasets import find_bad_images, load_dataset, raise_on_problems

    options: dict[str, Any] = {"strict": False}  # collect annotation problems instead of stopping at the first file
    split = cfg.split
    if cfg.dataset == "csv":
        split = cfg.csv or cfg.split
        if cfg.classes is not None:
            options["class_names"] = parse_classes(cfg.classes)
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
