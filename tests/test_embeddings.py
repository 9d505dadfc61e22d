"""Label embeddings: GloVe (word averaging, compound names), onehot, npy."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from iagcn.classes import VOC_CLASSES
from iagcn.extract.embeddings import class_name_words, load_label_embeddings
from iagcn.errors import UserError


def _write_glove(path, vectors: dict[str, list[float]], extra_lines: str = "") -> None:
    path.write_text("".join(f"{w} {' '.join(repr(float(v)) for v in vec)}\n" for w, vec in vectors.items())
                    + extra_lines)


def test_class_name_words():
    assert class_name_words("pottedplant") == ["potted", "plant"]
    assert class_name_words("diningtable") == ["dining", "table"]
    assert class_name_words("tvmonitor") == ["tv", "monitor"]
    assert class_name_words("traffic light") == ["traffic", "light"]
    assert class_name_words("Hair_Drier") == ["hair", "drier"]
    assert class_name_words("dog") == ["dog"]


def test_glove_averages_words_of_multiword_names(tmp_path):
    rng = np.random.default_rng(0)
    words = ["dog", "tv", "monitor", "traffic", "light", "unused"]
    vectors = {w: rng.standard_normal(5).round(4).tolist() for w in words}
    path = tmp_path / "glove.txt"
    # a cased duplicate before the lower-case entry (840B style) must not win
    _write_glove(path, {"Dog": [9.0] * 5, **vectors})
    emb, source = load_label_embeddings(f"glove:{path}", ["dog", "tvmonitor", "traffic light"])
    assert emb.shape == (3, 5) and emb.dtype == np.float32
    np.testing.assert_allclose(emb[0], vectors["dog"], rtol=1e-6)
    np.testing.assert_allclose(emb[1], (np.array(vectors["tv"]) + np.array(vectors["monitor"])) / 2, rtol=1e-6)
    np.testing.assert_allclose(emb[2], (np.array(vectors["traffic"]) + np.array(vectors["light"])) / 2, rtol=1e-6)
    assert source.startswith("glove:") and hashlib.sha256(path.read_bytes()).hexdigest() in source


def test_glove_word_with_spaces_and_cased_only_entry(tmp_path):
    path = tmp_path / "g.txt"
    path.write_text(". . . 1 2\nCat 3 4\ndog 5 6\n")   # a token with spaces (840B has some); only cased "Cat"
    emb, _ = load_label_embeddings(f"glove:{path}", ["cat", "dog"])
    np.testing.assert_array_equal(emb, np.array([[3, 4], [5, 6]], np.float32))


def test_glove_lists_all_missing_words_at_once(tmp_path):
    path = tmp_path / "g.txt"
    _write_glove(path, {"dog": [1, 2, 3], "table": [1, 1, 1]})
    with pytest.raises(UserError) as e:
        load_label_embeddings(f"glove:{path}", ["dog", "diningtable", "pottedplant"])
    msg = str(e.value)
    assert "3 words" in msg
    for needle in ("'dining' (class 'diningtable')", "'potted'", "'plant'"):
        assert needle in msg
    assert "'table'" not in msg


def test_glove_ragged_lines_rejected(tmp_path):
    path = tmp_path / "g.txt"
    _write_glove(path, {"dog": [1, 2, 3]}, extra_lines="cat 1 2\n")
    with pytest.raises(UserError, match="line 2: 2 values, expected 3"):
        load_label_embeddings(f"glove:{path}", ["dog", "cat"])
    path.write_text("dog 1 2 3\ncat 1 x 3\n")
    with pytest.raises(UserError, match="line 2: non-numeric"):
        load_label_embeddings(f"glove:{path}", ["dog", "cat"])
    path.write_text("dog x y\n")
    with pytest.raises(UserError, match="no vector values"):
        load_label_embeddings(f"glove:{path}", ["dog"])
    with pytest.raises(UserError, match="not found"):
        load_label_embeddings(f"glove:{tmp_path / 'nope.txt'}", ["dog"])


def test_onehot_and_npy(tmp_path):
    emb, source = load_label_embeddings("onehot", VOC_CLASSES)
    np.testing.assert_array_equal(emb, np.eye(20, dtype=np.float32))
    assert source == "onehot"
    arr = np.arange(20 * 7, dtype=np.float64).reshape(20, 7)
    np.save(tmp_path / "e.npy", arr)
    emb, source = load_label_embeddings(f"npy:{tmp_path / 'e.npy'}", VOC_CLASSES)
    assert emb.dtype == np.float32 and np.array_equal(emb, arr)
    assert hashlib.sha256((tmp_path / "e.npy").read_bytes()).hexdigest() in source
    np.save(tmp_path / "bad.npy", arr[:19])
    with pytest.raises(UserError, match=r"shape \(19, 7\), expected \(20, E\)"):
        load_label_embeddings(f"npy:{tmp_path / 'bad.npy'}", VOC_CLASSES)
    for spec in ("word2vec:x", "glove", "onehot:3"):
        with pytest.raises(UserError, match="not valid"):
            load_label_embeddings(spec, VOC_CLASSES)
