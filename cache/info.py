"""`iagcn info`: a human-readable summary of one cache file."""
from __future__ import annotations

import json
import os

import numpy as np

from iagcn.cache.format import FeatureCache
from iagcn.cache.schema import ROW_FIELDS


def describe(path: str | os.PathLike, *, sample_rows: int = 256) -> str:
    """Human-readable summary for `iagcn info`: attributes, dataset shapes and a short feature summary."""
    with FeatureCache(path) as c:
        lines = [f"cache: {c.path}  ({c.path.stat().st_size / 2**20:.1f} MiB)"]
        for k in sorted(c.attrs):
            v = c.attrs[k]
            if k == "extract_config":
                lines.append("extract_config:")
                lines += [f"    {kk}: {json.dumps(vv)}" for kk, vv in sorted(v.items())]
                continue
            text = json.dumps(v)
            if len(text) > 160:
                text = text[:157] + "..."
            lines.append(f"{k}: {text}")
        lines.append("datasets:")
        for name in list(ROW_FIELDS) + ["label_embeddings"]:
            ds = c.dataset(name)
            lines.append(f"    {name:<17} {str(ds.shape):<20} {ds.dtype}")
        _, source = c.label_embeddings()
        lines.append(f"label_embeddings source: {source}")
        k = min(sample_rows, c.num_images)
        if k:
            g = c.read("global", 0, k).astype(np.float32)
            valid = c.read("box_valid")
            labels = c.read("labels")
            lines.append(f"features (first {k} images): global mean {g.mean():.4f} std {g.std():.4f} "
                         f"min {g.min():.4f} max {g.max():.4f}, finite {bool(np.isfinite(g).all())}")
            lines.append(f"valid boxes per image: mean {valid.sum(1).mean():.1f} of {c.num_rois}")
            pos = (labels == 1).sum(0)
            lines.append(f"labels: {(labels == 1).sum(1).mean():.2f} positives per image; "
                         f"{int((labels == -1).sum())} ignored entries; positives per class "
                         + ", ".join(f"{n}={p}" for n, p in zip(c.class_names, pos)))
        return "\n".join(lines)
