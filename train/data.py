"""Batches of cached features for training and scoring: in RAM when they fit, otherwise streamed.

* The features (``global`` (n, D) and ``regions`` (n, N, D), float16) load into RAM when their size fits
  ``memory_budget_gib``; otherwise they are streamed: the same seeded permutation of the split as in RAM, read
  in windows of shuffle_buffer_blocks x block_rows rows (each window's rows in file order, one HDF5 read of their
  runs), so streaming trains the same model as RAM, bit for bit. h5py fancy indexing per batch is never used.
* Labels, validity masks and image ids are small and always in RAM.
* In RAM the features are kept as float32 when twice their float16 size still fits the budget (VOC: 1.7 GB),
  so a batch is one gather (``np.take(..., mode="clip", out=)`` straight into the preallocated float32 batch
  buffers: no allocation per batch; ``mode="raise"`` buffers ``out``, half the speed), as fast as a plain NumPy
  gather (measured by `make bench`, benchmark 3);
  otherwise, and when streaming, float16 -> float32 per batch: ``torch.Tensor.copy_`` from the float16 rows into a
  preallocated float32 buffer (the fastest conversion measured: docs/performance.md, "Measurements behind design
  choices"). On CUDA the float16 rows are moved first and converted on the device.
* Non-finite features (NaN/Inf) are detected when rows are loaded or read, before any batch uses them,
  and refused with an error naming the cache.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from iagcn.cache.format import FeatureCache
from iagcn.errors import UserError

FEATURES = ("global", "regions")


@dataclass
class Batch:
    x: torch.Tensor          # (B, D) float32 global features
    X: torch.Tensor | None   # (B, N, D) float32 region features (None when not requested)
    valid: torch.Tensor      # (B, N) bool
    labels: torch.Tensor     # (B, C) int8 in {1, 0, -1}
    index: np.ndarray        # (B,) row numbers in the cache

    def __len__(self) -> int:
        return int(self.x.shape[0])


class CacheData:
    """The rows of one cache file as batches; holds the file open while streaming.

    Args:
        cache: a FeatureCache or a path.
        memory_budget_gib: load features into RAM when they take at most this much (float16 bytes).
        block_rows: rows per contiguous read when streaming. shuffle_buffer_blocks: blocks mixed per buffer.
        num_rois: read only the first N ROIs of each image (TrainConfig.num_rois, the top-N control); the cache
            must hold its ROIs in proposer-score order (checked: :func:`check_score_order`). None = all of them.
    """

    def __init__(self, cache: FeatureCache | str | os.PathLike, *, memory_budget_gib: float = 4.0,
                 block_rows: int = 256, shuffle_buffer_blocks: int = 8, num_rois: int | None = None) -> None:
        self._owns_cache = not isinstance(cache, FeatureCache)   # close() closes only a file opened here
        self.cache = FeatureCache(cache) if self._owns_cache else cache
        self.num_rois = num_rois
        try:
            self._load(memory_budget_gib, block_rows, shuffle_buffer_blocks)
        except BaseException:
            self.close()  # a refusal (non-finite rows, ...) leaves no HDF5 handle open
            raise

    def _load(self, memory_budget_gib: float, block_rows: int, shuffle_buffer_blocks: int) -> None:
        c = self.cache
        self.path = c.path
        self.n, self.N, self.D, self.C = c.num_images, c.num_rois, c.feature_dim, c.num_classes
        self.class_names = c.class_names
        self.labels = c.labels()                                   # (n, C) int8, validated on open
        self.valid = c.read("box_valid").astype(bool)              # (n, N)
        if self.num_rois is not None and self.num_rois != self.N:  # the top-N slice: the ROI axis is cut here only
            check_score_order(c, self.num_rois, valid=self.valid)
            self.N, self.valid = self.num_rois, np.ascontiguousarray(self.valid[:, :self.num_rois])  # (n, N')
        self.image_ids = c.image_ids()
        self.block_rows = max(1, int(block_rows))
        self.shuffle_buffer_blocks = max(1, int(shuffle_buffer_blocks))
        self.feature_bytes = c.nbytes(["global"]) + c.nbytes(["regions"]) * self.N // c.num_rois  # what is read
        self.in_memory = self.feature_bytes <= memory_budget_gib * 2**30
        self._global = self._regions = None
        # in RAM as float32 when twice the float16 size fits the budget: batches are then a plain gather (no
        # per-batch conversion, which stalls on loaded cores); otherwise float16, converted per batch
        self.memory_dtype = np.float32 if self.in_memory and 2 * self.feature_bytes <= memory_budget_gib * 2**30 \
            else np.float16
        if self.in_memory:
            self._global = np.empty((self.n, self.D), self.memory_dtype)            # (n, D)
            self._regions = np.empty((self.n, self.N, self.D), self.memory_dtype)   # (n, N, D)
            g16 = np.empty((512, self.D), np.float16)                                # (512, D) staging rows
            r16 = np.empty((512, self.N, self.D), np.float16)                        # (512, N, D)
            for s in range(0, self.n, 512):
                e = min(self.n, s + 512)
                c.read_into("global", g16[:e - s], s, e)
                self._read_regions(r16[:e - s], s, e)
                self._check_finite(g16[:e - s], r16[:e - s], s, e)
                self._global[s:e] = g16[:e - s]                                      # f16 -> memory dtype
                self._regions[s:e] = r16[:e - s]

    def _read_regions(self, out: np.ndarray, start: int, stop: int) -> None:
        """Rows ``start:stop`` of ``regions`` into ``out`` (b, N, D): the first N ROIs of each (all without a slice)."""
        if self.N == self.cache.num_rois:
            self.cache.read_into("regions", out, start, stop)
        else:
            self.cache.dataset("regions").read_direct(out, source_sel=np.s_[start:stop, :self.N])

    # -- checks ------------------------------------------------------------------------------------
    def _check_finite(self, g: np.ndarray, r: np.ndarray, start: int = 0, stop: int | None = None, *,
                      rows: np.ndarray | None = None) -> None:
        """Refuse non-finite rows of ``g``, ``r``: cache rows ``start:stop``, or the cache rows ``rows``."""
        for name, arr in (("global", g), ("regions", r)):
            if arr is not None and not _all_finite(arr):
                first = int(np.nonzero(~np.isfinite(arr.reshape(len(arr), -1)).all(1))[0][0])
                bad = int(rows[first]) if rows is not None else start + first
                raise UserError(f"cache {self.path}: non-finite features (NaN/Inf) in '{name}' (first at row {bad}, "
                                f"image {self.image_ids[bad]}); re-extract that cache (nothing was trained on them)")

    # -- batches -----------------------------------------------------------------------------------
    def batches(self, indices: np.ndarray | None = None, *, batch_size: int, shuffle: bool = False,
                rng: np.random.Generator | None = None, device: torch.device | str = "cpu",
                regions: bool = True) -> Iterator[Batch]:
        """Yield Batches over ``indices`` (default: all rows), shuffled with ``rng`` when ``shuffle``.

        ``regions=False`` skips the region features (X = None) for heads that only read x (resnet, mlgcn):
        the same rows in the same order, a tenth of the bytes.

        On CPU the float32 tensors are preallocated buffers reused by the next batch: consume a batch
        (forward + backward) before asking for the next one.
        """
        device = torch.device(device)
        idx = np.arange(self.n) if indices is None else np.asarray(indices, dtype=np.int64)
        if shuffle and rng is None:
            raise ValueError("batches(shuffle=True) needs an rng")
        if len(idx) and (idx.min() < 0 or idx.max() >= self.n):                # the gathers below do not check
            raise IndexError(f"batches: row numbers must lie in [0, {self.n}) for cache {self.path}")
        bufs = _Buffers(batch_size, self.N, self.D) if device.type == "cpu" else None
        source = self._memory_rows(idx, batch_size, shuffle, rng, regions, bufs) if self.in_memory else \
            self._streamed_rows(idx, batch_size, shuffle, rng, regions)
        for rows, g16, r16 in source:
            yield self._to_batch(rows, g16, r16, bufs, device)

    def _to_batch(self, rows: np.ndarray, g16: np.ndarray, r16: np.ndarray, bufs, device) -> Batch:
        b = len(rows)
        if bufs is not None and g16.dtype == np.float32 and bufs.holds(g16):
            x = torch.from_numpy(g16)                                         # (b, D) gathered into the buffer: no copy
            X = None if r16 is None else torch.from_numpy(r16)                # (b, N, D)
        elif bufs is not None:
            x = bufs.x[:b].copy_(torch.from_numpy(g16))                       # (b, D) f16 (or f32 view) -> f32 buffer
            X = None if r16 is None else bufs.X[:b].copy_(torch.from_numpy(r16))  # (b, N, D)
        else:
            x = torch.from_numpy(g16).to(device).float()                      # (b, D) convert on the device
            X = None if r16 is None else torch.from_numpy(r16).to(device).float()  # (b, N, D)
        valid = torch.from_numpy(self.valid[rows]).to(device)                 # (b, N)
        labels = torch.from_numpy(self.labels[rows]).to(device)               # (b, C)
        return Batch(x=x, X=X, valid=valid, labels=labels, index=rows)

    def _memory_rows(self, idx, batch_size, shuffle, rng, regions=True, bufs=None):
        order = rng.permutation(idx) if shuffle else idx
        contiguous = not shuffle and len(order) > 0 and np.array_equal(order, np.arange(order[0], order[0] + len(order)))
        # float32 in RAM on CPU: gather straight into the preallocated float32 batch buffers (np.take(..., out=)),
        # no allocation per batch
        into = bufs is not None and self.memory_dtype == np.float32
        for s in range(0, len(order), batch_size):
            rows = order[s:s + batch_size]
            if contiguous:
                a, e = int(rows[0]), int(rows[-1]) + 1
                yield rows, self._global[a:e], (self._regions[a:e] if regions else None)  # views, no copy
            elif into:
                b = len(rows)
                g, r = bufs.x_np[:b], (bufs.X_np[:b] if regions else None)
                np.take(self._global, rows, axis=0, out=g, mode="clip")    # (b, D) in-RAM gather
                if regions:
                    np.take(self._regions, rows, axis=0, out=r, mode="clip")  # (b, N, D)
                yield rows, g, r
            else:
                yield rows, self._global[rows], (self._regions[rows] if regions else None)  # in-RAM gather

    def _streamed_rows(self, idx, batch_size, shuffle, rng, regions=True):
        """The rows of ``_memory_rows``, in the same order and batches: the in-RAM permutation of ``idx`` (the same
        rng draw), read window by window. Each window holds the next rows of that order (as many whole batches as
        fit shuffle_buffer_blocks x block_rows rows); its rows are read in file order, consecutive rows in one run,
        with one HDF5 read per dataset, then batches are gathered from it in the permutation's order. The memory
        budget, block_rows and shuffle_buffer_blocks therefore change only the speed, never the model."""
        order = rng.permutation(idx) if shuffle else idx                      # exactly _memory_rows' order
        window = max(1, (self.shuffle_buffer_blocks * self.block_rows) // batch_size) * batch_size
        window = min(window, max(len(order), 1))
        rshape = (self.N, self.D) if regions else (0, 0)                      # (0, 0): X skipped, rows kept aligned
        buf_g = np.empty((window, self.D), np.float16)                        # (window, D)
        buf_r = np.empty((window, *rshape), np.float16)                       # (window, N, D)
        for s in range(0, len(order), window):
            part = order[s:s + window]                                        # (m,) the next rows of the order
            m = len(part)
            by_row = np.argsort(part, kind="stable")                          # (m,) buffer slot -> position in part
            rows = part[by_row]                                               # (m,) sorted: file order
            self._read_rows("global", buf_g[:m], rows)
            if regions:
                self._read_rows("regions", buf_r[:m], rows)
            self._check_finite(buf_g[:m], buf_r[:m] if regions else None, rows=rows)
            slot = np.empty(m, np.int64)
            slot[by_row] = np.arange(m)                                       # (m,) position in part -> buffer slot
            for b in range(0, m, batch_size):
                sel = slot[b:b + batch_size]
                yield part[b:b + batch_size], buf_g[sel], (buf_r[sel] if regions else None)  # one gather per batch

    def _read_rows(self, name: str, out: np.ndarray, rows: np.ndarray) -> None:
        """Rows ``rows`` (sorted) of dataset ``name`` into ``out`` in that order: one HDF5 read of the union of
        their runs of consecutive rows (h5py fancy indexing is far slower)."""
        from h5py import h5s

        ds = self.cache.dataset(name)
        breaks = np.nonzero(np.diff(rows) != 1)[0] + 1
        starts = np.concatenate([[0], breaks])                                # (runs,) run starts in ``rows``
        stops = np.concatenate([breaks, [len(rows)]])
        if len(starts) == 1 and (len(rows) == 0 or rows[-1] - rows[0] == len(rows) - 1):
            if len(rows) and name == "regions":
                self._read_regions(out, int(rows[0]), int(rows[-1]) + 1)      # one contiguous run, first N ROIs
            elif len(rows):
                self.cache.read_into(name, out, int(rows[0]), int(rows[-1]) + 1)  # one contiguous run
            return
        space = ds.id.get_space()
        space.select_none()
        tail = (self.N, *ds.shape[2:]) if name == "regions" else tuple(ds.shape[1:])  # regions: the first N ROIs
        for a, e in zip(starts, stops):
            space.select_hyperslab((int(rows[a]),) + (0,) * len(tail), (int(e - a),) + tail, op=h5s.SELECT_OR)
        ds.id.read(h5s.create_simple(out.shape), space, out)

    def close(self) -> None:
        if self._owns_cache:
            self.cache.close()

    def __enter__(self) -> "CacheData":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_score_order(cache: FeatureCache, num_rois: int, *, valid: np.ndarray) -> None:
    """Refuse, in one line, a top-N slice that would not be the proposer's top N: ``num_rois`` above the cache's
    ROI count, or an image whose valid boxes do not come first in non-increasing ``box_scores`` (padding last).

    Every proposer of extract/proposers.py writes them so (``top_n_with_padding``: a stable sort by score, NMS in that
    order, padding after); the first N of a cache are then the boxes an extraction with N would have kept."""
    have = cache.num_rois
    if not 1 <= num_rois <= have:
        raise UserError(f"--set num_rois={num_rois}: cache {cache.path} holds {have} ROIs per image; choose "
                        f"1..{have} (or null for all)")
    scores = cache.read("box_scores").astype(np.float64)            # (n, N)
    padding_first = (~valid[:, :-1] & valid[:, 1:]).any(1)          # (n,) a valid box after a padding box
    rising = ((np.diff(scores, axis=1) > 0) & valid[:, 1:]).any(1)  # (n,) a valid box scored above the one before
    bad = np.flatnonzero(padding_first | rising)
    if len(bad):
        raise UserError(f"cache {cache.path}: its ROIs are not in proposer-score order (image "
                        f"{cache.image_ids()[bad[0]]}, {len(bad)} image(s)), so its first {num_rois} are not the top "
                        f"{num_rois}; re-extract with --num-rois {num_rois} or drop --set num_rois")


def _all_finite(arr: np.ndarray) -> bool:
    """np.isfinite(arr).all(), fast for float16: NaN/Inf are exactly the values whose exponent bits are all ones
    (np.isfinite on float16 is not vectorised; docs/performance.md, "Measurements behind design choices")."""
    if arr.dtype == np.float16:
        return not ((arr.view(np.uint16) & 0x7C00) == 0x7C00).any()
    return bool(np.isfinite(arr).all())


class _Buffers:
    """Preallocated float32 batch tensors (reused batch after batch on CPU)."""

    def __init__(self, batch_size: int, N: int, D: int) -> None:
        self.x = torch.empty(batch_size, D)                                   # (B, D)
        self.X = torch.empty(batch_size, N, D)                                # (B, N, D)
        self.x_np, self.X_np = self.x.numpy(), self.X.numpy()                 # the same memory, as NumPy arrays

    def holds(self, a: np.ndarray) -> bool:
        """Whether ``a`` is a leading slice of one of the buffers (filled in place: no copy needed)."""
        return a.base is self.x_np or a.base is self.X_np
