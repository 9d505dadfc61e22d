"""`iagcn merge`: combine the shard files of one extraction into one cache equal to an unsharded run."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Sequence

from iagcn.errors import UserError
from iagcn.fsutil import check_writable_dir, exclusive_lock, interrupt_hint
from iagcn.processes import defer_interrupts, raise_if_interrupted

MERGE_CHUNK_ROWS = 1024   # rows copied per step of a merge (an interrupt takes effect between steps)


def merge_shards(paths: Sequence[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Combine shard files of one extraction into one cache equal to an unsharded run; verify completeness."""
    from iagcn.cache.format import ROW_FIELDS, FeatureCache
    from iagcn.cache.writer import CacheWriter

    if not paths:
        raise UserError("iagcn merge: give the shard files to merge")
    with contextlib.ExitStack() as stack:
        caches = [stack.enter_context(FeatureCache(p)) for p in paths]  # all closed, whichever fails to open
        infos = []
        for c in caches:
            sh = c.attrs.get("shard")
            if sh is None:
                raise UserError(f"{c.path}: not a shard (no 'shard' attribute); merge only --shard outputs")
            infos.append((sh["rows"][0], sh["rows"][1], c, sh))
        infos.sort(key=lambda t: t[0])
        first = infos[0][2]
        total, count = infos[0][3]["total_rows"], infos[0][3]["count"]
        for a, b, c, sh in infos:
            if c.attrs["extract_config_hash"] != first.attrs["extract_config_hash"]:
                raise UserError(f"{c.path}: extract_config_hash {c.attrs['extract_config_hash']} differs from "
                                f"{first.path} ({first.attrs['extract_config_hash']}); merge shards of one extraction")
            if (sh["total_rows"], sh["count"]) != (total, count):
                raise UserError(f"{c.path}: shard of {sh['count']} / {sh['total_rows']} rows, others "
                                f"{count} / {total}; merge shards of one extraction")
            if c.num_images != b - a:
                raise UserError(f"{c.path}: holds {c.num_images} rows but claims {a}:{b}; re-extract that shard")
        expected = 0
        for a, b, c, sh in infos:
            if a < expected:
                raise UserError(f"{c.path}: rows {a}:{b} overlap rows already covered up to {expected}; "
                                f"give each shard exactly once")
            if a > expected:
                raise UserError(f"rows {expected}:{a} are missing (no shard given holds them); add that shard")
            expected = b
        if expected != total:
            raise UserError(f"shards cover rows 0:{expected} of {total}; the shard holding {expected}: is missing")
        attrs = {k: v for k, v in first.attrs.items()
                 if k not in ("shard", "format_version", "git_commit", "created", "num_rois", "feature_dim")}
        emb, source = first.label_embeddings()
        out = Path(out)
        if out.is_dir():
            raise UserError(f"--out {out} is a folder; give the merged cache's file name")
        check_writable_dir(out.parent, what=f"the merged cache {out.name}")
        hint = f"interrupted: nothing was written to {out} (the merge is atomic; the shards are untouched); " \
               f"rerun the same command"
        # h5py drops exceptions raised inside its callbacks: a Ctrl-C is recorded and acted on between chunks
        with exclusive_lock(out, what="merged cache"), interrupt_hint(lambda: hint), defer_interrupts():
            with CacheWriter(out, num_images=total, num_rois=first.num_rois, feature_dim=first.feature_dim,
                             num_classes=first.num_classes, embedding_dim=emb.shape[1], attrs=attrs) as w:
                for a, b, c, _ in infos:
                    for r0 in range(0, b - a, MERGE_CHUNK_ROWS):
                        r1 = min(b - a, r0 + MERGE_CHUNK_ROWS)
                        w.write_rows(a + r0, {f: c.read(f, r0, r1) for f in ROW_FIELDS})
                        raise_if_interrupted()
                w.set_label_embeddings(emb, source=source)
        return out
