"""Sweeps a researcher runs (issue 21): grids over config fields, parallel runs, the ETA, through the real CLI on
tiny synthetic caches."""
from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from iagcn.cli import main
from iagcn.train.config import config_for_preset
from tests.conftest import REPO_ROOT, cli_env, write_cache_pair

SMALL_SET = ["--set", "gcn_widths=8,8", "--set", "region_widths=8,8,8"]


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    return write_cache_pair(tmp_path_factory.mktemp("grid-caches"), n_train=120, n_eval=60, num_rois=4, dim=16,
                            num_classes=5, embedding_dim=8, prototypes_seed=3)


def invoke(args: list) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def sweep_args(caches, out, *extra) -> list:
    return ["sweep", "--train-cache", caches[0], "--eval-cache", caches[1], "--threads", "1", "--quiet",
            "--bootstrap", "100", "--out", out, *SMALL_SET, *extra]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# -- --grid: parsing and refusals -----------------------------------------------------------------------------
@pytest.mark.parametrize("grid,extra,needle", [
    (["nonsense=1,2"], [], "--grid nonsense: unknown field"),
    (["num_threads=1,2"], [], "num_threads is execution-only"),
    (["device=cpu,cuda"], [], "device is execution-only"),
    (["seed=0,1"], [], "set it with --seeds"),
    (["preset=iagcn,mlgcn"], [], "set it with --presets"),
    (["lr=0.1,0.2", "lr=0.3,0.4"], [], "--grid lr is given twice"),
    (["lr=0.1,0.10"], [], "0.1 listed more than once"),
    (["lr=0.1"], [], "give two or more values"),
    (["lr=0.1,fast"], [], "--grid lr=fast: expected a float"),
    (["fusion_lambda=0.5,0.8"], ["--set", "fusion_lambda=0.7"], "fusion_lambda is also set by --set"),
    (["epochs=1,2"], ["--epochs", "3"], "epochs is also set by --epochs"),
    (["schedule=cosine,weekly"], [], "choose one of step, cosine"),
    (["fusion_lambda=0.5,1.5"], [], "fusion_lambda"),
    (["lr_step=10,20"], [], "--grid lr_step=10,20: schedule=cosine does not use it"),
])
def test_grid_refusals_are_one_line_before_anything_is_written(caches, tmp_path, grid, extra, needle):
    args = sweep_args(caches, tmp_path / "s", "--presets", "mlgcn", "--seeds", "0", *extra)
    for g in grid:
        args += ["--grid", g]
    code, _, err = invoke(args)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "s").exists()


def test_run_names_are_readable_stable_and_unique():
    from iagcn.train.sweep import run_name, run_names

    cfg = config_for_preset("iagcn", fusion_lambda=0.5, gcn_widths=(16, 32), seed=2)
    assert run_name(cfg) == "iagcn-s2"                                      # without a grid: as before
    assert run_name(cfg, ["fusion_lambda"]) == "iagcn-fusion_lambda=0.5-s2"
    assert run_name(cfg, ["gcn_widths", "fusion_lambda"]) == "iagcn-gcn_widths=16x32-fusion_lambda=0.5-s2"
    other = config_for_preset("iagcn", f_cnn_weight_decay=None, label_embeddings="my emb/h0.npy", seed=2)
    assert run_name(other, ["f_cnn_weight_decay", "label_embeddings"]) == \
        "iagcn-f_cnn_weight_decay=null-label_embeddings=my_emb_h0.npy-s2"
    with pytest.raises(Exception, match="would share a folder"):
        run_names([cfg, cfg], ["fusion_lambda"])


def _mean(values):
    return sum(values) / len(values)


def test_grid_sweep_has_a_column_per_varied_field_and_compares_rows_that_differ_in_one_thing(caches, tmp_path):
    out = tmp_path / "s"
    code, stdout, err = invoke(sweep_args(caches, out, "--presets", "resnet,mlgcn", "--seeds", "0,1",
                                          "--grid", "lr=0.05,0.2", "--grid", "epochs=1,2"))
    assert code == 0, err
    # run folders: preset x lr x epochs x seed, named by the varied values
    for preset in ("resnet", "mlgcn"):
        for lr in ("0.05", "0.2"):
            for epochs in ("1", "2"):
                for seed in (0, 1):
                    run = out / f"{preset}-lr={lr}-epochs={epochs}-s{seed}"
                    config = json.loads((run / "config.json").read_text())["config"]
                    assert (config["lr"], config["epochs"], config["seed"]) == (float(lr), int(epochs), seed)
    rows = read_csv(out / "results.csv")
    assert list(rows[0])[:4] == ["preset", "lr", "epochs", "seed"]
    assert rows[0]["preset"] == "linear-probe" and rows[0]["lr"] == "" and len(rows) == 1 + 16
    # table.md: one row per (preset, lr, epochs), one column per varied field
    table = (out / "table.md").read_text()
    header = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    assert header[:4] == ["Preset", "lr", "epochs", "seeds"]
    body = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:]
            if line.startswith("| ")]
    assert [r[:4] for r in body] == [["linear-probe", "-", "-", "1"]] + \
        [[p, lr, e, "2"] for p in ("resnet", "mlgcn") for lr in ("0.05", "0.2") for e in ("1", "2")]
    # each Δ: the resnet group minus the mlgcn group at the SAME lr and epochs, from the runs' own metrics.json
    ablation = json.loads((out / "ablation.json").read_text())
    assert ablation["varied"] == ["lr", "epochs"]
    seen = 0
    for lr in ("0.05", "0.2"):
        for e in ("1", "2"):
            def run_map(preset):
                return _mean([json.loads((out / f"{preset}-lr={lr}-epochs={e}-s{s}" / "metrics.json").read_text())
                              ["metrics"]["mAP"] for s in (0, 1)])
            delta = ablation["deltas"][f"resnet lr={lr} epochs={e}"]["metrics"]["mAP"]
            assert abs(delta["diff"] - (run_map("resnet") - run_map("mlgcn"))) < 1e-6
            cmp = ablation["comparisons"][f"resnet lr={lr} epochs={e}"]
            assert {Path(d).name for d in cmp["a"]} == {f"mlgcn-lr={lr}-epochs={e}-s{s}" for s in (0, 1)}
            row = next(r for r in body if r[:3] == ["resnet", lr, e])
            assert row[-2].startswith(f"{delta['diff']:+.1f}") and row[-1] != "-"     # Δ and the seed p-value
            seen += 1
    assert seen == 4 and not any(k.startswith("linear-probe") for k in ablation["deltas"])
    assert all(r[-2] == "baseline" for r in body if r[0] == "mlgcn")
    assert "compared with mlgcn at the same lr, epochs" in table
    # the report lists every run with its varied values
    report = (out / "report.html").read_text()
    assert "<td>resnet-lr=0.2-epochs=2-s1</td>" in report and "<th>epochs</th>" in report


# -- --jobs: the same numbers as one by one, resumable ------------------------------------------------------------
def _run_files(run: Path) -> dict:
    with np.load(run / "scores.npz") as z:
        scores = z["scores"].tobytes()
    log = [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")} for r in read_csv(run / "log.csv")]
    metrics = json.loads((run / "metrics.json").read_text())
    return {"scores": scores, "metrics": metrics["metrics"], "selected": metrics["selected_epoch"], "log": log}


@pytest.mark.parametrize("parallel", [["--jobs", "2"], ["--devices", "cpu,cpu"]])
def test_jobs_2_gives_the_same_numbers_as_one_by_one(caches, tmp_path, parallel):
    grid = ["--presets", "resnet,iagcn", "--seeds", "0", "--grid", "lr=0.05,0.1", "--epochs", "2", "--no-probe"]
    one, two = tmp_path / "one", tmp_path / "two"
    code, _, err = invoke(sweep_args(caches, one, *grid))
    assert code == 0, err
    args = sweep_args(caches, two, *grid)
    args.remove("--quiet")                                                   # the progress lines name the devices
    args[args.index("--threads") + 1] = "2"                                  # 2 threads split over 2 workers
    code, _, err = invoke([*args, *parallel])
    assert code == 0, err
    runs = sorted(p.name for p in one.iterdir() if (p / "metrics.json").exists())
    assert len(runs) == 4 and runs == sorted(p.name for p in two.iterdir() if (p / "metrics.json").exists())
    for run in runs:
        assert _run_files(one / run) == _run_files(two / run), run
        record = json.loads((two / run / "config.json").read_text())
        assert record["torch_threads"] == 1 and record["config"]["num_threads"] == 1
        if "--devices" in parallel:                        # --devices alone: one worker per entry, each on its own
            assert record["device"] == "cpu" and record["config"]["device"] == "cpu"
    if "--devices" in parallel:
        starts = [line for line in err.splitlines() if ": training on cpu (" in line]
        assert len(starts) == 4, err
    drop = {"train_seconds"}
    rows = [[{k: v for k, v in r.items() if k not in drop} for r in read_csv(d / "results.csv")] for d in (one, two)]
    assert rows[0] == rows[1]                                    # results.csv in config order, whatever finished first
    assert (one / "table.md").read_text() == (two / "table.md").read_text()


def _epochs_logged(run: Path) -> int:
    try:
        return max(0, len((run / "log.csv").read_text().splitlines()) - 1)
    except OSError:
        return 0


def test_jobs_2_killed_mid_sweep_then_rerun_trains_only_what_is_missing(caches, tmp_path):
    import time

    grid = ["--presets", "resnet,iagcn", "--seeds", "0", "--grid", "lr=0.05,0.1", "--epochs", "40", "--no-probe",
            "--batch-size", "8"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    code, _, err = invoke(sweep_args(caches, full, *grid))                 # the reference: one by one, uninterrupted
    assert code == 0, err
    proc = subprocess.Popen([sys.executable, "-m", "iagcn", *map(str, sweep_args(caches, killed, *grid)), "--jobs", "2"],
                            env=cli_env(OMP_NUM_THREADS="1"), cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    iagcn_runs = [killed / "iagcn-lr=0.05-s0", killed / "iagcn-lr=0.1-s0"]
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and not any(_epochs_logged(r) >= 2 for r in iagcn_runs):
        time.sleep(0.01)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGKILL)                                         # the workers die with it
    proc.wait(30)
    done_before = {p.name: (p / "metrics.json").stat().st_mtime_ns for p in killed.iterdir()
                   if (p / "metrics.json").exists()}
    assert len(done_before) < 4
    code, _, err = invoke([*sweep_args(caches, killed, *grid), "--jobs", "2"])
    assert code == 0, err
    for name, stamp in done_before.items():                                 # complete runs were not retrained
        assert (killed / name / "metrics.json").stat().st_mtime_ns == stamp
    for run in sorted(p.name for p in full.iterdir() if (p / "metrics.json").exists()):
        assert _run_files(full / run) == _run_files(killed / run), run
    drop = {"train_seconds"}
    rows = [[{k: v for k, v in r.items() if k not in drop} for r in read_csv(d / "results.csv")] for d in (full, killed)]
    assert rows[0] == rows[1]


def test_devices_are_assigned_round_robin_to_worker_slots(caches, tmp_path):
    from iagcn.train.sweep import slot_devices, worker_threads

    assert slot_devices(2, ["cuda:0", "cuda:1"]) == ["cuda:0", "cuda:1"]
    assert slot_devices(3, ["cuda:0", "cuda:1"]) == ["cuda:0", "cuda:1", "cuda:0"]
    assert slot_devices(2) == [None, None]
    assert worker_threads(16, 3) == 5 and worker_threads(1, 4) == 1
    code, _, err = invoke(sweep_args(caches, tmp_path / "t", "--presets", "resnet", "--seeds", "0",
                                     "--devices", "cpu", "--device", "cpu"))
    assert code == 2 and "--device and --devices" in err
    code, _, err = invoke(sweep_args(caches, tmp_path / "t", "--presets", "resnet", "--seeds", "0",
                                     "--devices", "cuda:7"))
    assert code == 2 and "cuda:7" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "t").exists()


# -- the ETA ------------------------------------------------------------------------------------------------
def test_eta_is_weighted_by_each_presets_measured_cost():
    from iagcn.train.sweep import eta_seconds, sweep_eta

    # iagcn measured at 3 s/epoch, resnet at 0.5 s/epoch; mlgcn not measured: (60 + 2) / (20 + 4) s/epoch overall
    measured = {"iagcn": (60.0, 20.0), "resnet": (2.0, 4.0)}
    remaining = [("iagcn", 10), ("resnet", 10), ("mlgcn", 12)]
    expected = 3.0 * 10 + 0.5 * 10 + (62.0 / 24.0) * 12
    assert eta_seconds(remaining, measured) == pytest.approx(expected)
    # two workers share the work, but never finish before the longest run
    assert eta_seconds(remaining, measured, jobs=2) == pytest.approx(expected / 2)
    assert eta_seconds([("iagcn", 10), ("resnet", 1)], measured, jobs=4) == pytest.approx(30.0)
    assert eta_seconds(remaining, {}) is None
    assert sweep_eta(remaining, {}) == "3 run(s) to train, ETA after the first"
    assert sweep_eta(remaining, measured) == "3 run(s) to train, ETA 1m06s (rough: mlgcn not timed yet)"
    assert sweep_eta([], measured) == "nothing left to train"


# -- monitoring: loss parts, probe progress, TensorBoard hparams, captions, colours, ticks ------------------
def test_log_csv_holds_every_loss_part_and_they_add_up_to_the_loss(caches, tmp_path):
    from iagcn.train.data import CacheData
    from iagcn.train.run import train_run

    cfg = config_for_preset("iagcn", epochs=2, seed=0, gcn_widths=(8, 8), region_widths=(8, 8, 8), num_threads=1,
                            beta=0.5, branch_loss_weight=0.7, a_I_loss_weight=0.3)
    assert cfg.decay_on == "classifiers" and cfg.weight_decay > 0          # the frozen recipe's L2 on M
    with CacheData(caches[0]) as tr, CacheData(caches[1]) as te:
        train_run(cfg, train_data=tr, eval_data=te, out_dir=tmp_path / "r", progress=False, log=lambda *_: None)
    rows = read_csv(tmp_path / "r" / "log.csv")
    assert {"loss_ml", "loss_kl", "loss_y_w", "loss_y_r", "loss_a_I", "loss_l2"} <= set(rows[0])
    for r in rows:
        v = {k: float(x) for k, x in r.items()}
        assert all(v[k] > 0 for k in ("loss_ml", "loss_kl", "loss_y_w", "loss_y_r", "loss_a_I", "loss_l2"))
        total = v["loss_ml"] + 0.5 * v["loss_kl"] + 0.7 * (v["loss_y_w"] + v["loss_y_r"]) + 0.3 * v["loss_a_I"] \
            + v["loss_l2"]                                                    # Eq. 12 and the options on top
        assert total == pytest.approx(v["loss"], rel=1e-4)


def test_sweep_says_what_it_does_before_and_during_the_probe_fit(caches, tmp_path):
    from iagcn.train.data import CacheData
    from iagcn.train.sweep import run_sweep

    messages: list[str] = []
    cfg = config_for_preset("resnet", epochs=1, seed=0, num_threads=1)
    with CacheData(caches[0]) as tr, CacheData(caches[1]) as te:
        run_sweep([cfg], train_data=tr, eval_data=te, out_dir=tmp_path, progress=False, log=messages.append)
    probe = [i for i, m in enumerate(messages) if m.startswith("linear-probe")]
    assert probe[0] == 0 and "before the 1 run(s)" in messages[0]           # the first line, before any fit
    per_c = [m for m in messages if "values of C," in m]
    assert len(per_c) == 8 and per_c[0].startswith("linear-probe: C 0.001: CV mAP")   # one line per candidate C
    assert max(probe) < next(i for i, m in enumerate(messages) if "resnet-s0: training" in m)


def test_tensorboard_records_the_runs_hyperparameters(caches, tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra (pip install 'iagcn[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    code, _, err = invoke(["train", "--train-cache", caches[0], "--eval-cache", caches[1], "--preset", "mlgcn",
                           "--epochs", "1", "--lr", "0.07", "--threads", "1", "--quiet", "--tensorboard",
                           "--out", tmp_path / "r", *SMALL_SET])
    assert code == 0, err
    ea = EventAccumulator(str(tmp_path / "r" / "tensorboard"))
    ea.Reload()
    content = ea.PluginTagToContent("hparams")
    data = {}
    for tag, raw in content.items():
        d = plugin_data_pb2.HParamsPluginData.FromString(raw)
        data[d.WhichOneof("data")] = d
    start = data["session_start_info"].session_start_info.hparams
    assert start["lr"].number_value == pytest.approx(0.07) and start["preset"].string_value == "mlgcn"
    assert start["gcn_widths"].string_value == "8,8" and start["epochs"].number_value == 1
    assert "device" not in start and "num_threads" not in start            # execution fields are not hparams
    metrics = {m.name.tag for m in data["experiment"].experiment.metric_infos}
    assert {"eval/mAP", "eval/CF1", "eval/OF1"} <= metrics
    assert "loss/y_w" in ea.Tags()["scalars"] and "loss/l2" in ea.Tags()["scalars"]


def test_the_curve_caption_says_whether_a_hold_out_mAP_is_drawn():
    import pandas as pd

    from iagcn.evaluate.sweep_report import curve_caption

    def frame(*protocols):
        return pd.DataFrame({"preset": ["linear-probe", *["iagcn"] * len(protocols)],
                             "protocol": ["C by 3-fold CV on the train cache", *protocols]})

    held = curve_caption(frame("holdout-0.1"))
    assert "hold-out's (0.1 of the train cache" in held and "no mAP" not in held and "C by" not in held
    last = curve_caption(frame("last-epoch"))
    assert "no hold-out" in last and "no mAP is measured per epoch" in last and "hold-out's" not in last
    both = curve_caption(frame("last-epoch", "select-on-eval"))
    assert "evaluation cache's" in both and "no hold-out" in both


def test_one_hue_per_preset_with_seeds_as_shades_and_integer_epoch_ticks(tmp_path, monkeypatch):
    import colorsys

    import pandas as pd
    from matplotlib.ticker import MaxNLocator

    from iagcn.evaluate import plots

    members = {"mlgcn-s0": "mlgcn", "iagcn-s0": "iagcn", "mlgcn-s1": "mlgcn", "iagcn-s1": "iagcn", "mlgcn-s2": "mlgcn"}
    colors = plots.shaded_colors(members)
    hue = {m: colorsys.rgb_to_hsv(*c)[0] for m, c in colors.items()}
    assert hue["mlgcn-s0"] == pytest.approx(hue["mlgcn-s1"], abs=0.02) == pytest.approx(hue["mlgcn-s2"], abs=0.02)
    assert abs(hue["mlgcn-s0"] - hue["iagcn-s0"]) > 0.1                      # another preset, another hue
    assert len({colors[m] for m in members}) == 5                            # every seed its own shade
    assert plots.shaded_colors(members) == colors                            # the same mapping, the same colours
    figures = []
    monkeypatch.setattr(plots, "save_png", lambda fig, out: figures.append(fig) or Path(out))
    n = 7
    logs = {m: pd.DataFrame({"epoch": np.arange(1, n + 1), "loss": np.linspace(1, 0.5, n) + i,
                             "seconds": np.ones(n)}) for i, m in enumerate(members)}
    plots.plot_training_curves_overlay(logs, tmp_path / "o.png", colors=colors)
    for ax in figures[-1].axes:
        assert isinstance(ax.xaxis.get_major_locator(), MaxNLocator)
        assert all(float(t) == int(t) for t in ax.get_xticks())
        drawn = {line.get_label(): line.get_color() for line in ax.get_lines()}
        assert {k: tuple(v) for k, v in drawn.items()} == colors
    plots.plot_training_curves(logs["mlgcn-s0"], tmp_path / "one.png")
    assert all(isinstance(ax.xaxis.get_major_locator(), MaxNLocator) for ax in figures[-1].axes)


def _die(task):
    """A worker task that dies as an out-of-memory kill would (no exception, no result)."""
    import os

    os._exit(9)


def test_a_worker_that_dies_is_one_error_line_not_a_hang(caches, tmp_path):
    from iagcn.errors import UserError
    from iagcn.train.data import CacheData
    from iagcn.train.sweep import _run_parallel

    cfgs = [config_for_preset("resnet", epochs=1, seed=s, num_threads=1) for s in (0, 1)]
    with CacheData(caches[0]) as tr, CacheData(caches[1]) as te:
        with pytest.raises(UserError, match="a worker process died while training resnet-s[01]"):
            _run_parallel(cfgs, [tmp_path / "resnet-s0", tmp_path / "resnet-s1"], [0, 1], [None, None], tr, te,
                          progress=False, log=lambda *_: None, start_line=lambda *a: "", finished=lambda *a: None,
                          work=_die)


def test_ctrl_c_during_jobs_2_is_one_line_and_stops_the_workers(caches, tmp_path):
    import time

    out = tmp_path / "s"
    args = sweep_args(caches, out, "--presets", "iagcn", "--seeds", "0,1", "--epochs", "400", "--no-probe",
                      "--jobs", "2")
    proc = subprocess.Popen([sys.executable, "-m", "iagcn", *map(str, args)], env=cli_env(OMP_NUM_THREADS="1"),
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and not all(
            _epochs_logged(out / f"iagcn-s{s}") >= 1 for s in (0, 1)):
        time.sleep(0.01)
    assert proc.poll() is None, proc.communicate()
    children = [int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                               text=True).stdout.split()]
    workers = [p for p in children if "resource_tracker" not in Path(f"/proc/{p}/cmdline").read_text()]
    assert len(workers) == 2, children

    def alive(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
        except OSError:
            return False

    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and len(err.strip().splitlines()) == 1 and "interrupted" in err, err
    deadline = time.time() + 10
    while time.time() < deadline and any(alive(p) for p in workers):
        time.sleep(0.05)
    assert not [p for p in workers if alive(p)]
