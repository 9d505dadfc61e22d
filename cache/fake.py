"""Synthetic feature caches with planted label structure, for tests and benchmarks (no images involved).

Generative model (seeded, vectorised):
  * ``num_scenes`` scenes, each with a few "core" classes that co-occur often (scene-level
    co-occurrence: something for the statistical LCM to learn) and per-class presence
    probabilities elsewhere small.
  * Each class c has a prototype vector p_c in R^D. An image's present classes place one object each
    in a random subset of its valid regions: region feature = p_c * strength + noise; the other
    regions are background noise. The global feature is the max over its regions plus noise
    (mimicking global max pooling).
  * ``difficult_rate`` of present entries become -1 (ignored), as VOC's difficult-only classes.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from iagcn.cache.format import iter_row_blocks
from iagcn.cache.writer import CacheWriter


def fake_labels(rng: np.random.Generator, *, n: int, num_classes: int, num_scenes: int = 4) -> np.ndarray:
    """(n, C) int8 labels in {0, 1} with scene-level co-occurrence; every image has >= 1 positive."""
    C = num_classes
    scene_of = rng.integers(0, num_scenes, size=n)                       # (n,)
    core = np.zeros((num_scenes, C), dtype=bool)                          # (S, C)
    for s in range(num_scenes):
        core[s, rng.choice(C, size=max(2, C // num_scenes), replace=False)] = True
    probs = np.where(core, 0.55, 0.04)                                    # (S, C)
    labels = rng.random((n, C)) < probs[scene_of]                         # (n, C)
    empty = ~labels.any(1)
    labels[empty, rng.integers(0, C, size=int(empty.sum()))] = True
    return labels.astype(np.int8)


def write_fake_cache(path: str | os.PathLike, *, n: int, num_rois: int = 40, dim: int = 64, num_classes: int = 20,
                     embedding_dim: int = 300, seed: int = 0, difficult_rate: float = 0.02, noise: float = 1.0,
                     strength: float = 2.0, valid_fraction: float = 0.9, block: int = 1024,
                     dataset: str = "fake", split: str = "train", class_names: list[str] | None = None,
                     prototypes_seed: int | None = None, extra_attrs: dict[str, Any] | None = None) -> str:
    """Write a cache with planted structure; returns the path.

    ``prototypes_seed`` fixes the class prototypes and label embeddings independently of ``seed``, so a
    train and a test cache drawn with different seeds share the same classes (pass the same value).
    """
    C, N, D = num_classes, num_rois, dim
    proto_rng = np.random.default_rng(1000 + (seed if prototypes_seed is None else prototypes_seed))
    prototypes = proto_rng.standard_normal((C, D)).astype(np.float32)            # (C, D)
    embeddings = proto_rng.standard_normal((C, embedding_dim)).astype(np.float32)  # (C, E)
    rng = np.random.default_rng(seed)
    names = class_names or [f"class{c:02d}" for c in range(C)]
    config = {"backbone": "fake", "weights": "none", "num_rois": N, "image_size": 0, "dim": D}
    attrs = {"dataset": dataset, "split": split, "class_names": names, "extract_config": config,
             "extract_config_hash": "fake", "backbone": "fake", "backbone_weights": "none",
             "backbone_weights_sha256": None, "proposer": "fake", "proposer_weights_sha256": None,
             "image_size": 0, "skipped_ids": []}
    attrs.update(extra_attrs or {})
    labels_all = fake_labels(rng, n=n, num_classes=C)
    with CacheWriter(path, num_images=n, num_rois=N, feature_dim=D, num_classes=C,
                     embedding_dim=embedding_dim, attrs=attrs) as w:
        for start, stop in iter_row_blocks(n, block):
            b = stop - start
            labels = labels_all[start:stop]                                            # (b, C)
            regions = rng.standard_normal((b, N, D)).astype(np.float32) * noise      # (b, N, D)
            # each present class owns one random region in the valid prefix
            valid_count = np.maximum(1, (rng.random(b) * (1 - valid_fraction) * 2 * N).astype(int))
            valid = np.arange(N)[None, :] < (N - np.minimum(valid_count, N - 1))[:, None]  # (b, N)
            img, cls = np.nonzero(labels == 1)
            slot = (rng.random(len(img)) * valid.sum(1)[img]).astype(int)
            regions[img, slot] += strength * prototypes[cls]                          # (k, D)
            regions[~valid] = 0.0
            global_ = regions.max(1) + 0.1 * rng.standard_normal((b, D)).astype(np.float32)  # (b, D)
            stored = labels.copy()
            drop = (rng.random(labels.shape) < difficult_rate) & (labels == 1)
            stored[drop] = -1
            boxes = np.sort(rng.random((b, N, 4)).astype(np.float32) * 100, axis=-1)[..., [0, 1, 2, 3]]
            w.write_rows(start, {
                "global": global_.astype(np.float16), "regions": regions.astype(np.float16),
                "boxes": boxes, "box_scores": rng.random((b, N)).astype(np.float32), "box_valid": valid,
                "labels": stored, "image_ids": [f"{split}_{i:06d}" for i in range(start, stop)],
                "image_sizes": np.tile(np.array([[100, 100]], dtype=np.int32), (b, 1)),
            })
        w.set_label_embeddings(embeddings, source=f"fake:seed={prototypes_seed if prototypes_seed is not None else seed}")
    return str(path)
