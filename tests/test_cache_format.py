"""The cache module: atomic commit, validation, compatibility refusal, `iagcn info` through the CLI."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from iagcn.cache.fake import write_fake_cache
from iagcn.cache.format import FeatureCache, check_compatible
from iagcn.cache.writer import CacheWriter
from iagcn.cli import main
from iagcn.errors import UserError


def test_fake_cache_roundtrip(tmp_path):
    p = write_fake_cache(tmp_path / "a.h5", n=30, dim=16, num_classes=5, seed=1)
    with FeatureCache(p) as c:
        assert (c.num_images, c.num_rois, c.feature_dim, c.num_classes) == (30, 40, 16, 5)
        assert c.read("regions").dtype == np.float16
        assert c.image_ids()[:2] == ["train_000000", "train_000001"]
        assert set(np.unique(c.read("labels"))) <= {-1, 0, 1}
        emb, src = c.label_embeddings()
        assert emb.shape == (5, 300) and src.startswith("fake")
    assert not list(tmp_path.glob(".a.h5.tmp-*"))


def test_writer_refuses_incomplete_and_leaves_nothing(tmp_path):
    final = tmp_path / "x.h5"
    w = CacheWriter(final, num_images=4, num_rois=2, feature_dim=3, num_classes=2, embedding_dim=2, attrs={})
    with pytest.raises(RuntimeError, match="never written"):
        w.commit()
    assert not final.exists() and not list(tmp_path.iterdir())


def test_exception_inside_writer_keeps_previous_file(tmp_path):
    final = tmp_path / "x.h5"
    write_fake_cache(final, n=5, dim=4, num_classes=3)
    before = final.read_bytes()
    with pytest.raises(ZeroDivisionError):
        with CacheWriter(final, num_images=4, num_rois=2, feature_dim=3, num_classes=2, embedding_dim=2, attrs={}):
            1 / 0
    assert final.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["x.h5"]


def test_truncated_and_future_caches_refused(tmp_path):
    p = tmp_path / "t.h5"
    write_fake_cache(p, n=20, dim=8, num_classes=3)
    data = p.read_bytes()
    (tmp_path / "trunc.h5").write_bytes(data[: len(data) // 3])
    with pytest.raises(UserError, match="trunc.h5"):
        FeatureCache(tmp_path / "trunc.h5")
    with h5py.File(p, "r+") as h:
        h.attrs["format_version"] = json.dumps(99)
    with pytest.raises(UserError, match="newer"):
        FeatureCache(p)


def test_missing_field_refused(tmp_path):
    p = tmp_path / "m.h5"
    write_fake_cache(p, n=5, dim=8, num_classes=3)
    with h5py.File(p, "r+") as h:
        del h["box_valid"]
    with pytest.raises(UserError, match="box_valid"):
        FeatureCache(p)


def test_compatibility(tmp_path):
    a = write_fake_cache(tmp_path / "a.h5", n=5, dim=8, num_classes=3)
    b = write_fake_cache(tmp_path / "b.h5", n=5, dim=8, num_classes=4)
    c = write_fake_cache(tmp_path / "c.h5", n=5, dim=16, num_classes=3)
    with FeatureCache(a) as ca, FeatureCache(b) as cb, FeatureCache(c) as cc:
        check_compatible(ca, ca)
        with pytest.raises(UserError, match="class_names"):
            check_compatible(ca, cb)
        with pytest.raises(UserError, match="feature_dim"):
            check_compatible(ca, cc)


def test_info_cli(tmp_path):
    p = write_fake_cache(tmp_path / "a.h5", n=12, dim=8, num_classes=3)
    r = CliRunner().invoke(main, ["info", str(p)])
    assert r.exit_code == 0, r.output
    assert "regions           (12, 40, 8)" in r.output and "format_version: 1" in r.output
    r = CliRunner().invoke(main, ["info", str(tmp_path / "nope.h5")])
    assert r.exit_code == 2 and "does not exist" in r.output


def test_cache_written_without_positional_io_reads_back_the_same(tmp_path, monkeypatch):
    """Windows has no os.pwrite / os.pread / os.preadv: the writer's fallback (seek + write) gives the same cache."""
    import os

    import numpy as np

    from iagcn.cache.fake import write_fake_cache
    from iagcn.cache.format import FeatureCache

    a = write_fake_cache(tmp_path / "a.h5", n=30, num_rois=4, dim=8, num_classes=3, embedding_dim=5, seed=3)
    for name in ("pwrite", "pread", "preadv"):
        monkeypatch.delattr(os, name, raising=False)
    b = write_fake_cache(tmp_path / "b.h5", n=30, num_rois=4, dim=8, num_classes=3, embedding_dim=5, seed=3)
    monkeypatch.undo()
    with FeatureCache(a) as x, FeatureCache(b) as y:
        for f in ("global", "regions", "boxes", "labels", "image_ids", "label_embeddings"):
            np.testing.assert_array_equal(x.read(f), y.read(f), err_msg=f)
