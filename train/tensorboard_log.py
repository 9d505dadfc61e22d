"""Opt-in TensorBoard logging of a run (``iagcn train/sweep --tensorboard``), through torch's SummaryWriter.

Event files go to ``<run dir>/tensorboard/``; ``tensorboard --logdir runs/`` shows every run of a folder (a sweep's
runs side by side). One point per epoch: the loss and its parts, the learning rate, the hold-out (selection) mAP,
seconds per epoch and throughput; at the end, the evaluation cache's metrics of the selected epoch and the run's
hyperparameters (the HPARAMS tab: every identity field of its config against those metrics, so a sweep's runs
compare in one table). log.csv stays the record a run keeps; TensorBoard is a view of the same numbers.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from iagcn.errors import UserError

#: log.csv column -> TensorBoard tag
EPOCH_TAGS = {"loss": "loss/total", "loss_ml": "loss/ml", "loss_kl": "loss/kl", "loss_y_w": "loss/y_w",
              "loss_y_r": "loss/y_r", "loss_a_I": "loss/a_I", "loss_l2": "loss/l2", "lr": "lr",
              "select_mAP": "holdout/mAP", "seconds": "time/seconds_per_epoch", "samples_per_s": "time/images_per_s"}


class TensorBoardLog:
    """A SummaryWriter for one run folder; a no-op object when not enabled."""

    def __init__(self, run_dir: str | Path, *, enabled: bool, hparams: dict[str, Any] | None = None) -> None:
        self.writer = None
        self.hparams = dict(hparams or {})
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise UserError("--tensorboard needs the tensorboard package: pip install 'iagcn[tensorboard]' "
                            "(or pip install tensorboard), or drop --tensorboard") from e
        self.dir = Path(run_dir) / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(self.dir))

    def epoch(self, row: dict[str, Any]) -> None:
        """One epoch of log.csv (``row["epoch"]`` is 1-based); NaN values (no hold-out) are skipped."""
        if self.writer is None:
            return
        step = int(row["epoch"])
        for key, tag in EPOCH_TAGS.items():
            value = row.get(key)
            if value is not None and math.isfinite(float(value)):
                self.writer.add_scalar(tag, float(value), step)
        self.writer.flush()

    def catch_up(self, history: list[dict[str, Any]]) -> None:
        """Log the epochs of ``history`` (a resumed run's, from last.pt) that the event files lack: a run killed after
        it saved an epoch's checkpoint but before that epoch's events were written resumes after that epoch, which
        would otherwise never reach TensorBoard."""
        if self.writer is None or not history:
            return
        logged = self._logged_epochs()
        for row in history:
            if int(row["epoch"]) not in logged:
                self.epoch(row)

    def _logged_epochs(self) -> set[int]:
        """The epochs whose loss the event files of this run folder already hold."""
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        self.writer.flush()
        acc = EventAccumulator(str(self.dir), size_guidance={"scalars": 0})
        acc.Reload()
        tag = EPOCH_TAGS["loss"]
        return {int(e.step) for e in acc.Scalars(tag)} if tag in acc.Tags().get("scalars", []) else set()

    def final(self, metrics: dict[str, Any], *, epoch: int) -> None:
        """The evaluation cache's metrics of the selected checkpoint, at its epoch."""
        if self.writer is None:
            return
        shown = {}
        for key in ("mAP", "CF1", "OF1"):
            value = metrics.get(key)
            if value is not None and math.isfinite(float(value)):
                self.writer.add_scalar(f"eval/{key}", float(value), epoch)
                shown[f"eval/{key}"] = float(value)
        if self.hparams:
            self._write_hparams(shown)
        self.writer.flush()

    def _write_hparams(self, metrics: dict[str, float]) -> None:
        """The hparams plugin's summaries into this run's own event file (``add_hparams`` would open a sub-run):
        the hyperparameters, and the ``eval/*`` scalars above as the metrics they are compared on."""
        from torch.utils.tensorboard.summary import hparams

        values = {k: v if isinstance(v, (bool, int, float, str)) or v is None else ",".join(map(str, v))
                  if isinstance(v, (tuple, list)) else str(v) for k, v in self.hparams.items()}
        writer = self.writer._get_file_writer()
        for summary in hparams(values, metrics):
            writer.add_summary(summary)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
