"""Tiny on-disk images as an ``extract.datasets.DatasetSplit`` (tests only).

Also runnable: ``python tests/extract_helpers.py ROOT OUT CONFIG_JSON`` extracts the tiny split in a
subprocess (the kill-and-resume test kills it with SIGKILL).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from iagcn.extract.images import load_image_rgb
from iagcn.extract.split import DatasetSplit

CLASSES = ["red", "blue", "green"]


def write_tiny_images(root: Path, n: int = 12, *, seed: int = 0) -> DatasetSplit:
    """n images of 64-96 px with coloured rectangles; labels say which colours are present."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    colours = [(220, 40, 40), (40, 40, 220), (40, 200, 40)]
    ids, paths, labels = [], [], []
    for i in range(n):
        h, w = int(rng.integers(64, 97)), int(rng.integers(64, 97))
        img = (rng.random((h, w, 3)) * 60 + 90).astype(np.uint8)
        lab = np.zeros(len(CLASSES), np.int8)
        for c in rng.choice(3, size=int(rng.integers(1, 3)), replace=False):
            y, x = int(rng.integers(0, h - 24)), int(rng.integers(0, w - 24))
            img[y:y + int(rng.integers(16, 24)), x:x + int(rng.integers(16, 24))] = colours[c]
            lab[c] = 1
        path = root / f"img{i:03d}.jpg"
        Image.fromarray(img).save(path, quality=90)
        ids.append(f"img{i:03d}")
        paths.append(path)
        labels.append(lab)
    return DatasetSplit(name="tiny", root=root, split="test", class_names=list(CLASSES), image_ids=ids,
                        image_paths=paths, labels=np.stack(labels))


pil_loader = load_image_rgb  # the real loader (RGB, EXIF-transposed)


def csv_extract_command(root: Path, n: int, *extra) -> list:
    """Write ``n`` tiny images and their labels.csv under ``root``; the ``iagcn extract`` arguments (without
    --out) that extract them as a csv dataset, followed by ``extra``."""
    ds = write_tiny_images(root, n=n)
    rows = ["image,labels"] + [f"{p.name},{' '.join(c for c, v in zip(ds.class_names, lab) if v == 1)}"
                               for p, lab in zip(ds.image_paths, ds.labels)]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return ["extract", "--dataset", "csv", "--root", root, "--split", "labels", "--csv", root / "labels.csv",
            "--classes", ",".join(ds.class_names), *extra]


def onehot() -> tuple[np.ndarray, str]:
    return np.eye(len(CLASSES), dtype=np.float32), "onehot"


def kill_then_resume(args: list[str], out: Path, *, blocks: int, wait_s: float = 120) -> int:
    """Run ``args`` (this file as a script, writing ``out``), SIGKILL it once 2 blocks are committed under
    ``out.partial``, rerun it to the end; check that the rerun resumed. Returns the number of blocks committed
    before the kill."""
    import os
    import signal
    import subprocess
    import time

    from tests.conftest import REPO_ROOT, cli_env

    partial = out.parent / (out.name + ".partial")
    proc = subprocess.Popen(args, env=cli_env(OMP_NUM_THREADS="1"), cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + wait_s
    while time.time() < deadline and proc.poll() is None and len(list(partial.glob("rows-*.npz"))) < 2:
        time.sleep(0.005)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    committed = len(list(partial.glob("rows-*.npz")))
    assert 2 <= committed < blocks and not out.exists()
    # resume in a fresh process (same images: the helper rewrites them identically)
    done = subprocess.run(args, env=cli_env(OMP_NUM_THREADS="1"), cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stderr and f"{committed} of {blocks} blocks" in done.stderr
    assert not partial.exists()
    return committed


def extract_synth_pair(d: Path, *, num_rois: int = 4) -> tuple[Path, Path, dict[str, Path]]:
    """Synth images (16 trainval, 4 test) extracted with EfficientNet-Lite0 at 64 px and ``num_rois``
    selective-search ROIs, the bundled weights copied to a file: (image root, weight file, {split: cache})."""
    import shutil

    from iagcn.extract.backbones import bundled_lite0_weights
    from iagcn.extract.config import ExtractConfig
    from iagcn.extract.pipeline import run_extract
    from iagcn.extract.synth import write_synth

    root, _ = write_synth(d / "synth", n_train=16, n_test=4, seed=0)
    weights = d / "lite0.pth"
    shutil.copyfile(bundled_lite0_weights(), weights)
    caches = {}
    for split in ("trainval", "test"):
        cfg = ExtractConfig(dataset="voc", root=str(root), split=split, weights=str(weights), image_size=64,
                            num_rois=num_rois, proposer_image_size=64, workers=0, batch_size=8, device="cpu")
        run_extract(cfg, d / f"{split}.h5", progress=False)
        caches[split] = d / f"{split}.h5"
    return root, weights, caches


if __name__ == "__main__":
    from iagcn.extract.config import ExtractConfig
    from iagcn.extract.pipeline import extract_split

    root, out, cfg_json = sys.argv[1], sys.argv[2], sys.argv[3]
    ds = write_tiny_images(Path(root), n=int(json.loads(cfg_json).get("_n", 12)))
    fields = {k: v for k, v in json.loads(cfg_json).items() if not k.startswith("_")}
    extract_split(ds, ExtractConfig(**fields), out, label_embeddings=onehot(), image_loader=pil_loader, progress=False,
                  log=lambda m: print(m, file=sys.stderr, flush=True))

