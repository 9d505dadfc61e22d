"""One split of a dataset (:class:`DatasetSplit`) and the helpers every reader shares: paths kept inside the
dataset folder, problem lists in one error message."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from iagcn.errors import UserError

MAX_LISTED = 20  # problems shown in one error message; the rest are counted


@dataclass(frozen=True)
class DatasetSplit:
    """One split of a dataset: what stage one extracts into one cache file.

    ``labels`` is (n, C) int8 in {1, 0, -1}; row i belongs to ``image_ids[i]`` / ``image_paths[i]``.
    ``problems`` lists bad annotations found while reading with ``strict=False`` (those images are
    not in the split); ``bad_ids`` names them.
    """

    name: str                 # dataset kind/name: "voc", "coco", "csv" (or "synth-voc" etc.)
    root: Path                # dataset root as given (VOC2007 folder, COCO folder, CSV image folder)
    split: str                # split name (VOC: trainval/test/..., COCO: train2014/val2014, CSV: file stem)
    class_names: list[str]    # C class names, in label-column order
    image_ids: list[str]      # n ids, dataset order
    image_paths: list[Path]   # n image files
    labels: np.ndarray        # (n, C) int8 in {1, 0, -1}
    problems: list[str] = field(default_factory=list)  # "<file>: <what is wrong>" for dropped images
    bad_ids: list[str] = field(default_factory=list)   # ids dropped for bad annotations (strict=False)

    def __post_init__(self) -> None:
        n, C = len(self.image_ids), len(self.class_names)
        if len(self.image_paths) != n or self.labels.shape != (n, C) or self.labels.dtype != np.int8:
            raise ValueError(f"inconsistent DatasetSplit: {n} ids, {len(self.image_paths)} paths, "
                             f"labels {self.labels.shape} {self.labels.dtype}, {C} classes")

    def __len__(self) -> int:
        return len(self.image_ids)

    def without(self, ids: Iterable[str]) -> "DatasetSplit":
        """This split minus the images ``ids`` (e.g. those pre-flight found bad); they join ``bad_ids``.

        ``problems`` is unchanged: it keeps listing the annotation problems found while reading.
        """
        drop = set(ids)
        keep = [i for i, image_id in enumerate(self.image_ids) if image_id not in drop]
        dropped = [image_id for image_id in self.image_ids if image_id in drop]
        return dataclasses.replace(
            self, image_ids=[self.image_ids[i] for i in keep], image_paths=[self.image_paths[i] for i in keep],
            labels=self.labels[keep], bad_ids=[*self.bad_ids, *dropped])


# ---------------------------------------------------------------------------------------------------
# shared helpers


def join_inside(folder: Path, relative: str, *, what: str) -> Path:
    """``folder / relative``, refusing anything that escapes ``folder`` (``..``, absolute paths).

    The check is lexical (``os.path.normpath``), so a symlinked image folder is still accepted.
    """
    if not relative or "\x00" in relative:
        raise UserError(f"{what}: empty or invalid image id {relative!r}; fix the id")
    joined = os.path.normpath(os.path.join(folder, relative))
    base = os.path.normpath(folder)
    if os.path.isabs(relative) or os.path.commonpath([base, joined]) != base or joined == base:
        raise UserError(f"{what}: image id {relative!r} resolves outside the dataset folder {folder}; "
                        "image ids must be paths inside the dataset root")
    return Path(joined)


def format_problems(header: str, problems: list[str], hint: str) -> str:
    shown = problems[:MAX_LISTED]
    more = f"; ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
    return f"{header} ({len(problems)}): " + "; ".join(shown) + more + f"; {hint}"


def raise_or_keep(problems: dict[str, str], *, strict: bool, source: str) -> None:
    if problems and strict:
        raise UserError(format_problems(f"{source}: bad annotations", list(problems.values()),
                                         "fix or remove these files (or rerun with --skip-bad to leave them out)"))


def require_dir(path: Path, *, what: str, hint: str) -> None:
    if not path.is_dir():
        raise UserError(f"{what} {path} not found; {hint}")
