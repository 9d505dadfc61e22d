"""One evaluation's files per output folder: `iagcn eval --out DIR` replaces the previous evaluation there.

Two evaluations into one ``--out`` used to leave the files of both (a ``training_curves.png`` of a run next to the
metrics of a score file; last time's per-run subfolders next to this time's single run). Now the write phase of
an evaluation runs under the folder's lock (``DIR/.eval.lock``) and goes:

1. read the previous evaluation's file list from its manifest ``DIR/eval_outputs.json`` (an evaluation written
   before manifests existed: the names an evaluation writes, :data:`OUTPUT_NAMES`, directly in ``DIR`` when it
   holds an ``eval_config.json`` or ``tables.md``);
2. write the manifest listing those files and every file this evaluation may write (its folders x
   :data:`OUTPUT_NAMES`), marked incomplete, so that a kill from here on leaves a list the next run removes;
3. remove the previous files (and per-run folders they leave empty);
4. write this evaluation's files, then the manifest again: exactly the files written, complete.

Nothing else is touched: a file of the user's in ``DIR``, or another evaluation's folder below it, stays. The old
set is gone before the first new file is written, so ``DIR`` never holds files of two evaluations; a reader that
looks while an evaluation writes may see part of the new set (each file itself is atomic, :mod:`iagcn.fsutil`).
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator, Sequence

from iagcn.fsutil import exclusive_lock, remove_stale_temporaries, write_json_atomic
from iagcn.train import runfolder

MANIFEST = "eval_outputs.json"
#: every file name an evaluation writes into a folder (the top of --out and, with several runs, each run's folder)
OUTPUT_NAMES = ("eval_config.json", "metrics.json", "per_class_ap.csv", "scores.npz", "tables.md",
                "per_class_ap.png", "pr_curves.png", "training_curves.png")


def previous_outputs(out_dir: Path) -> list[Path]:
    """The files of the evaluation last written into ``out_dir``: its manifest's list (paths inside ``out_dir``
    only), else the known names in ``out_dir`` itself when an evaluation was written there."""
    root = out_dir.resolve()
    manifest = out_dir / MANIFEST
    if manifest.is_file():
        try:
            listed = json.loads(manifest.read_text()).get("files", [])
        except (OSError, ValueError, AttributeError):
            listed = []
        found = []
        for rel in listed if isinstance(listed, list) else []:
            path = (out_dir / str(rel)).resolve()
            if path != root and root in path.parents:      # never outside --out
                found.append(out_dir / str(rel))
        return found
    if (out_dir / "eval_config.json").is_file() or (out_dir / "tables.md").is_file():
        return [out_dir / name for name in OUTPUT_NAMES]
    return []


def _write_manifest(out_dir: Path, paths: Sequence[Path], *, complete: bool) -> None:
    files = sorted({os.path.relpath(Path(p), out_dir) for p in paths})
    write_json_atomic(out_dir / MANIFEST, {"files": files, "complete": complete}, what="evaluation manifest")


def _remove(paths: Sequence[Path], out_dir: Path) -> None:
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
def replacing_evaluation(out_dir: str | os.PathLike, *, folders: Sequence[str | os.PathLike] = ()
                         ) -> Iterator[list[Path]]:
    """Hold ``out_dir``'s evaluation lock, replace the previous evaluation's outputs (module docstring), and yield
    a list: append every file written. ``folders``: the per-run folders this evaluation writes below ``out_dir``."""
    out_dir = Path(out_dir)
    runfolder.refuse_run_folder(out_dir)  # an evaluation never replaces what training wrote
    with exclusive_lock(out_dir, what="evaluation folder", inside="eval"):  # one evaluation's files, never two mixed
        previous = previous_outputs(out_dir)
        planned = [Path(f) / name for f in [out_dir, *folders] for name in OUTPUT_NAMES]
        _write_manifest(out_dir, [*previous, *planned], complete=False)
        _remove(previous, out_dir)
        written: list[Path] = []
        yield written
        _write_manifest(out_dir, written, complete=True)
