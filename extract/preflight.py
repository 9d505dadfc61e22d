"""Stage one's pre-flight: read a split and find every bad annotation and image before any work is done."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from iagcn.classes import parse_class_names
from iagcn.errors import UserError
from iagcn.extract.config import ExtractConfig


def classes_from_cache(path: str | os.PathLike) -> str:
    """``--classes-from CACHE``: that cache's class list, in its order, as a ``--classes`` value."""
    from iagcn.cache.format import FeatureCache

    if not Path(path).is_file():
        raise UserError(f"--classes-from {path}: no such cache file; pass the cache of the split extracted first")
    with FeatureCache(path) as c:
        names = c.class_names
    return "\n".join(names) if any("," in n for n in names) else ",".join(names)


def describe_classes(cfg: ExtractConfig, class_names: list[str], out: Path) -> str:
    """The line extract prints about a csv dataset's class list: where it came from and how to reuse it."""
    shown = ", ".join(class_names[:40]) + (f", ... ({len(class_names) - 40} more)" if len(class_names) > 40 else "")
    if cfg.classes is None:
        return (f"classes: {len(class_names)} inferred from {cfg.csv or cfg.split} (sorted labels): {shown}; "
                f"extract the other splits with --classes-from {out} so that their caches use the same list")
    return f"classes: {len(class_names)} as given: {shown}"


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
        options["delimiter"] = cfg.label_sep
    elif cfg.csv is not None or cfg.classes is not None:
        raise UserError(f"--csv/--classes/--classes-from apply to --dataset csv only, not {cfg.dataset}; drop them")
    elif cfg.label_sep != " ":
        raise UserError(f"--label-sep applies to --dataset csv only, not {cfg.dataset}; drop it")
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
