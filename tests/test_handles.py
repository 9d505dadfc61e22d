"""`explain_image` reads one cache row (not the whole cache), and what opens an HDF5 file closes it."""
from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pytest
import torch

from iagcn.cache.fake import write_fake_cache
from iagcn.errors import UserError
from iagcn.train.config import config_for_preset
from iagcn.train.data import CacheData
from iagcn.train.inference import build_model, explain_image, predict_cache


def open_hdf5_files() -> int:
    return h5py.h5f.get_obj_count(h5py.h5f.OBJ_ALL, h5py.h5f.OBJ_FILE)


@pytest.fixture
def cache_and_model(tmp_path):
    path = write_fake_cache(tmp_path / "c.h5", n=12, num_rois=4, dim=8, num_classes=3, embedding_dim=5, seed=3)
    cfg = dataclasses.replace(config_for_preset("iagcn"), gcn_widths=(8,), region_widths=(8,))
    meta = {"num_classes": 3, "feature_dim": 8, "num_rois": 4, "embedding_dim": 5}
    torch.manual_seed(0)
    return path, build_model(cfg, meta, label_embeddings=np.ones((3, 5), np.float32)).eval()


def test_explain_reads_one_row(cache_and_model):
    """NaN features in every other row: loading the whole cache is refused, explaining row 2 works and equals a
    forward pass of that row alone (so only that row was read)."""
    path, model = cache_and_model
    with h5py.File(path, "r+") as h5:
        rows = np.arange(12) != 2
        regions = h5["regions"][...]
        regions[rows] = np.nan
        h5["regions"][...] = regions
        x = h5["global"][2:3].astype(np.float32)             # (1, D)
        X = regions[2:3].astype(np.float32)                   # (1, N, D)
        valid = h5["box_valid"][2:3]                          # (1, N)
        image_id = h5["image_ids"][2].decode()
    with pytest.raises(UserError, match="non-finite"):
        CacheData(path)
    before = open_hdf5_files()
    info = explain_image(model, path, image_id)
    assert open_hdf5_files() == before
    with torch.no_grad():
        ref = model(torch.from_numpy(x), torch.from_numpy(X), torch.from_numpy(valid)).logits[0].numpy()
    assert info["index"] == 2 and info["image_id"] == image_id
    np.testing.assert_allclose(info["logits"], ref, rtol=1e-6, atol=1e-6)
    with pytest.raises(UserError, match="non-finite"):
        explain_image(model, path, 3)
    assert open_hdf5_files() == before


def test_predict_cache_closes_what_it_opens(cache_and_model):
    path, model = cache_and_model
    before = open_hdf5_files()
    out = predict_cache(model, path)
    assert out["scores"].shape == (12, 3) and open_hdf5_files() == before
    with CacheData(path) as data:  # a CacheData passed in stays open for its owner
        predict_cache(model, data)
        assert open_hdf5_files() == before + 1 and data.labels.shape == (12, 3)
    assert open_hdf5_files() == before


def test_cache_data_refusal_leaves_no_handle(tmp_path):
    path = write_fake_cache(tmp_path / "c.h5", n=6, num_rois=2, dim=4, num_classes=2, embedding_dim=3, seed=1)
    with h5py.File(path, "r+") as h5:
        h5["global"][0, 0] = np.inf
    before = open_hdf5_files()
    with pytest.raises(UserError, match="non-finite"):
        CacheData(path)
    assert open_hdf5_files() == before
