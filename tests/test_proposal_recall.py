"""bench/proposal_recall.py: ground-truth boxes from VOC XML, IoU, and recall of proposals (hand-computed values)."""
from __future__ import annotations

import numpy as np

from bench.proposal_recall import best_overlaps, box_iou, main, voc_boxes
from iagcn.extract.proposal_common import Proposals


def test_voc_boxes_are_0_based_and_objects_without_a_box_are_counted(tmp_path):
    xml = tmp_path / "a.xml"
    xml.write_text("<annotation><object><name>dog</name><bndbox><xmin>11</xmin><ymin>21</ymin><xmax>50</xmax>"
                   "<ymax>60</ymax></bndbox></object><object><name>cat</name></object></annotation>")
    boxes, no_box = voc_boxes(xml)
    assert boxes.tolist() == [[10, 20, 50, 60]] and no_box == 1


def test_iou_and_best_overlap():
    a = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    b = np.array([[5, 0, 15, 10], [0, 0, 10, 10], [100, 100, 110, 110]], np.float32)
    np.testing.assert_allclose(box_iou(a, b), [[50 / 150, 1, 0], [0, 0, 0]], rtol=1e-6)
    props = Proposals(boxes=b, scores=np.zeros(3, np.float32), valid=np.array([True, False, True]))
    np.testing.assert_allclose(best_overlaps(a, props), [50 / 150, 0], rtol=1e-6)   # the exact box is padding


def test_the_recall_command_runs_on_a_synthetic_voc_split(tmp_path, capsys):
    from bench.proposal_recall import recall_table
    from tests.conftest import run_cli

    run_cli(["synth", "--out", tmp_path, "--train", "4", "--test", "1", "--quiet"], check=True)
    root = tmp_path / "VOCdevkit" / "VOC2007"
    ids = (root / "ImageSets" / "Main" / "trainval.txt").read_text().split()[:3]
    n_gt = sum(len(voc_boxes(root / "Annotations" / f"{i}.xml")[0]) for i in ids)
    (row,) = recall_table(root, "trainval", proposers=["selective-search"], images=3, num_rois=20, image_size=None,
                          ious=(0.5, 0.7), log=lambda *_: None)
    assert row["gt_boxes"] == n_gt > 0 and row["images"] == 3
    assert 0 <= row["recall@0.7"] <= row["recall@0.5"] <= 1 and row["recall@0.5"] > 0   # glyphs on flat scenes
    assert main(["--voc-root", str(root), "--split", "trainval", "--images", "3", "--proposer", "selective-search",
                 "--num-rois", "20"]) == 0
    assert f"| selective-search | default | 3 | {n_gt} |" in capsys.readouterr().out
    assert main(["--voc-root", str(root), "--proposer", "torchvision:/no/such.pth", "--images", "1"]) == 2
    assert "--proposer-weights /no/such.pth: no such file" in capsys.readouterr().err
