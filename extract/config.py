"""Stage one's configuration: :class:`ExtractConfig` (identity vs execution), option checks, shard ranges."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from iagcn.device import resolve_device
from iagcn.errors import UserError
from iagcn.validation import ANY, Range, check_ranges, check_types


@dataclass(frozen=True)
class ExtractConfig:
    """Everything that determines a cache's contents (plus execution knobs that do not; see ``identity``)."""

    dataset: str = "voc"                      # dataset reader: voc | coco | csv
    root: str = ""                            # dataset root folder (VOCdevkit/VOC2007, the COCO folder, the image folder)
    split: str = "trainval"                   # split name (VOC ImageSets/Main/<split>.txt, COCO instances_<split>.json)
    csv: str | None = None                    # csv reader: the image,labels file
    classes: str | None = None                # csv reader: comma-separated class list or a file of names (None: from the CSV)
    label_sep: str = " "                      # csv reader: delimiter between the labels of one row (" ": any whitespace)
    keep_empty: bool = False                  # coco reader: keep images without annotations (published protocol drops them)
    backbone: str = "efficientnet-lite0"      # efficientnet-lite0 (offline default) | resnet101 (the paper)
    weights: str = "imagenet"                 # imagenet (bundled / torchvision API) | none (random, tests) | state-dict path
    proposer: str = "selective-search"        # selective-search (offline default) | torchvision | detectron2
    proposer_weights: str | None = None       # None: proposer default (coco / zoo) | none | path
    proposer_image_size: int | None = None    # proposer resolution: selective search longer side (256), RPN shorter side (800)
    detectron2_config: str = "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml"  # detectron2 model-zoo config name
    num_rois: int = 40                        # N proposals per image (padded with invalid whole-image boxes)
    image_size: int | None = None             # square backbone input side; None: the backbone's default (448 / 320)
    roi_output_size: int = 7                  # RoIAlign grid k x k, max-pooled into one region feature
    roi_sampling_ratio: int = 2               # RoIAlign bilinear samples per grid cell side
    label_embeddings: str = "onehot"          # glove:PATH | onehot | npy:PATH (label-node inputs H0)
    batch_size: int = 16                      # images per backbone batch (batches never straddle a block)
    block_rows: int = 64                      # rows per committed part file (resume granularity, shard alignment)
    workers: int = 2                          # DataLoader worker processes (decode, resize, selective search)
    device: str = "auto"                      # auto | cpu | cuda[:k] (iagcn.device.resolve_device)
    threads: int = 0                          # torch intra-op threads in the main process (0: torch's default)
    shard: str | None = None                  # "i/n": extract only shard i of n (contiguous whole blocks)
    skip_bad: bool = False                    # proceed past pre-flight problems, skipping (and recording) bad images

    def __post_init__(self) -> None:
        check_types(self, where="extract config", hint="fix the option")
        check_ranges(self, EXTRACT_RANGES, where="extract config", hint="fix the option",
                     option_names={f: EXTRACT_OPTIONS.get(f, "--" + f.replace("_", "-")) for f in EXTRACT_RANGES})

    def identity(self) -> "ExtractConfig":
        """The config with execution-only fields neutralised: what the cache's ``extract_config`` records.

        ``workers``, ``threads`` and ``shard`` never change the arrays; ``device`` is resolved to its kind,
        cpu or cuda (which CUDA device, cuda:k, does not change them either).
        """
        return dataclasses.replace(self, workers=0, threads=0, shard=None, device=resolve_device(self.device).type)


#: the allowed values of every ExtractConfig field, checked when the config is built (before any file is read)
EXTRACT_RANGES: dict[str, Range] = {
    # names, paths and choices: checked by the reader / backbone / proposer / embedding loaders that use them
    "dataset": ANY, "root": ANY, "split": ANY, "csv": ANY, "classes": ANY, "label_sep": ANY, "keep_empty": ANY, "backbone": ANY,
    "weights": ANY, "proposer": ANY, "proposer_weights": ANY, "detectron2_config": ANY, "label_embeddings": ANY,
    "device": ANY, "shard": ANY, "skip_bad": ANY,
    # 1000: an RPN keeps at most 1000 proposals per image at test time; each ROI costs D * 2 bytes per image
    "num_rois": Range(1, 1000, note="proposals per image"),
    "proposer_image_size": Range(32, 8192, none_ok=True, note="pixels"),
    "image_size": Range(32, 8192, none_ok=True, note="pixels"),
    "roi_output_size": Range(1, 64),
    "roi_sampling_ratio": Range(1, 64),
    "batch_size": Range(1, 4096),
    "block_rows": Range(1, 1_000_000),
    "workers": Range(0, 256),
    "threads": Range(0, 4096, note="0 = torch's default"),
}
EXTRACT_OPTIONS = {"csv": "--csv"}


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/n"`` -> (i, n) with 0 <= i < n."""
    if text is None:
        return None
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise UserError(f"--shard {text}: expected i/n, e.g. 0/4") from None
    if not (n >= 1 and 0 <= i < n):
        raise UserError(f"--shard {text}: need 0 <= i < n")
    return i, n


def shard_rows(num_rows: int, *, block_rows: int, index: int, count: int) -> tuple[int, int]:
    """Row range [start, stop) of shard ``index`` of ``count``: a contiguous run of whole blocks."""
    num_blocks = -(-num_rows // block_rows)
    b0, b1 = index * num_blocks // count, (index + 1) * num_blocks // count
    return min(num_rows, b0 * block_rows), min(num_rows, b1 * block_rows)


def validate_options(cfg: ExtractConfig) -> None:
    """Options that need more than a range (EXTRACT_RANGES is checked when the config is built): the shard."""
    parse_shard(cfg.shard)
