"""One evaluation's files per output folder: `iagcn eval --out DIR` replaces the previous evaluation there.

Two evaluations into one ``--out`` used to leave the files of both (a ``training_curves.png`` of a run next to the
metrics of a score file; last time's per-run subfolders next to this time's single run). Now the write phase of
an evaluation runs under the folder's lock (``DIR/.eval.lock``) and starts by removing the previous
evaluation's outputs:

* the files listed in its manifest, ``DIR/eval_outputs.json`` (written last, after every other output), and
* the names an evaluation writes (:data:`OUTPUT_NAMES`) in ``DIR`` and in each subfolder holding an
  ``eval_config.json`` (a previous several-run evaluation's per-run folders), which covers an evaluation that was
  killed before its manifest.

Nothing else is touched: a file of the user's in ``DIR`` stays. The old set is gone before the first new file is
written, so ``DIR`` never holds files of two evaluations; a reader that looks while an evaluation writes may see
part of the new set (each file itself is atomic, :mod:`iagcn.fsutil`).
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator

from iagcn.fsutil import exclusive_lock, remove_stale_temporaries, write_json_atomic
from iagcn.train import runfolder

MANIFEST = "eval_outputs.json"
#: every file name an evaluation writes into a folder (the top of --out and, with several runs, each run's folder)
OUTPUT_NAMES = ("eval_config.json", "metrics.json", "per_class_ap.csv", "scores.npz", "tables.md",
                "per_class_ap.png", "pr_curves.png", "training_curves.png")


def previous_outputs(out_dir: Path) -> list[Path]:
    """The files of the evaluation last written into ``out_dir`` (its manifest, plus the known names where an
    evaluation's ``eval_config.json`` shows one was written), inside ``out_dir`` only."""
    root = out_dir.resolve()
    found: list[Path] = []
    manifest = out_dir / MANIFEST
    if manifest.is_file():
        try:
            listed = json.loads(manifest.read_text()).get("files", [])
        except (OSError, ValueError, AttributeError):
            listed = []
        for rel in listed if isinstance(listed, list) else []:
            path = (out_dir / str(rel)).resolve()
            if path != root and root in path.parents:      # never outside --out
                found.append(out_dir / str(rel))
    folders = [d for d in [out_dir, *sorted(p for p in out_dir.iterdir() if p.is_dir())]
               if (d / "eval_config.json").is_file()]
    if folders and out_dir not in folders:                # the top of a several-run evaluation
        folders.insert(0, out_dir)
    found += [d / name for d in folders for name in OUTPUT_NAMES]
    return list(dict.fromkeys(found))


def _remove(paths: list[Path], out_dir: Path) -> None:
    subfolders = set()
    for path in paths:
        remove_stale_temporaries(path)
        if path.is_file() or path.is_symlink():
            path.unlink()
        if path.parent != out_dir:
            subfolders.add(path.parent)
    for sub in sorted(subfolders, key=lambda p: -len(p.parts)):   # emptied per-run folders go too
        lock = sub / ".eval.lock"
        with contextlib.suppress(OSError):
            if {p.name for p in sub.iterdir()} <= {lock.name}:
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
                sub.rmdir()


@contextlib.contextmanager
def replacing_evaluation(out_dir: str | os.PathLike) -> Iterator[list[Path]]:
    """Hold ``out_dir``'s evaluation lock, remove the previous evaluation's outputs, and yield a list: append every
    file written; on success the list becomes the manifest (written last)."""
    out_dir = Path(out_dir)
    runfolder.refuse_run_folder(out_dir)  # an evaluation never replaces what training wrote
    with exclusive_lock(out_dir, what="evaluation folder", inside="eval"):  # one evaluation's files, never two mixed
        if out_dir.is_dir():
            _remove(previous_outputs(out_dir), out_dir)
            with contextlib.suppress(FileNotFoundError):
                (out_dir / MANIFEST).unlink()                 # last: a kill before this repeats the removal
        written: list[Path] = []
        yield written
        files = sorted({os.path.relpath(Path(p), out_dir) for p in written})
        write_json_atomic(out_dir / MANIFEST, {"files": files}, what="evaluation manifest")
