"""`iagcn` subcommands of the `extract` stage. Each command module lists its click commands in COMMANDS."""
from __future__ import annotations

from pathlib import Path

import click

from iagcn.extract.synth import synth_command

COMMANDS: list = [synth_command]


@click.command("extract")
@click.option("--dataset", type=click.Choice(["voc", "coco", "csv"]), required=True, help="Dataset reader.")
@click.option("--root", type=click.Path(), required=True, help="Dataset root folder.")
@click.option("--split", required=True, help="Split name (VOC: trainval/test; COCO: train2014/val2014; csv: a name).")
@click.option("--out", type=click.Path(), default=None, help="Cache file [default: cache/<dataset>/<split>.h5].")
@click.option("--backbone", type=click.Choice(["efficientnet-lite0", "resnet101"]), default="efficientnet-lite0",
              show_default=True)
@click.option("--weights", default="imagenet", show_default=True,
              help="imagenet (efficientnet-lite0: bundled file; resnet101: torchvision download), none, or a state-dict path.")
@click.option("--proposer", type=click.Choice(["selective-search", "torchvision", "detectron2"]),
              default="selective-search", show_default=True)
@click.option("--proposer-weights", default=None, help="torchvision: coco (default) | none | PATH; detectron2: zoo | PATH.")
@click.option("--proposer-image-size", type=int, default=None,
              help="Proposer resolution [selective search: longer side 256; RPN: shorter side 800].")
@click.option("--detectron2-config", default="COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml",
              show_default=True, help="Detectron2 model-zoo config name.")
@click.option("--num-rois", type=int, default=40, show_default=True, help="Proposals per image (N).")
@click.option("--image-size", type=int, default=None, help="Backbone input side [resnet101: 448; efficientnet-lite0: 320].")
@click.option("--label-embeddings", default="onehot", show_default=True, help="glove:PATH | onehot | npy:PATH.")
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--block-rows", type=int, default=64, show_default=True,
              help="Rows per committed part (resume granularity; shards are whole blocks).")
@click.option("--workers", type=int, default=2, show_default=True, help="DataLoader worker processes.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--threads", type=int, default=0, help="torch threads in the main process (0: torch default).")
@click.option("--shard", default=None, help="i/n: extract shard i of n (merge with `iagcn merge`).")
@click.option("--skip-bad", is_flag=True, help="Skip images that fail pre-flight (recorded in the cache).")
@click.option("--csv", "csv_file", type=click.Path(), default=None, help="csv dataset: the image,labels file.")
@click.option("--classes", default=None, help="csv dataset: class list (comma-separated) or a file of names.")
@click.option("--keep-empty", is_flag=True, help="coco: keep images without annotations.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def extract_command(dataset, root, split, out, backbone, weights, proposer, proposer_weights, proposer_image_size,
                    detectron2_config, num_rois, image_size, label_embeddings, batch_size, block_rows, workers, device, threads,
                    shard, skip_bad, csv_file, classes, keep_empty, quiet):
    """Extract backbone + ROI features of one dataset split into an HDF5 cache (resumable; rerun to resume)."""
    from iagcn.extract.pipeline import ExtractConfig, parse_shard, run_extract

    cfg = ExtractConfig(dataset=dataset, root=str(root), split=split, csv=csv_file, classes=classes,
                        keep_empty=keep_empty, backbone=backbone, weights=weights, proposer=proposer,
                        proposer_weights=proposer_weights, proposer_image_size=proposer_image_size,
                        detectron2_config=detectron2_config, num_rois=num_rois, image_size=image_size,
                        label_embeddings=label_embeddings, batch_size=batch_size, block_rows=block_rows, workers=workers, device=device,
                        threads=threads, shard=shard, skip_bad=skip_bad)
    sh = parse_shard(shard)
    if out is None:
        suffix = "" if sh is None else f".shard{sh[0]}of{sh[1]}"
        out = Path("cache") / dataset / f"{split}{suffix}.h5"
    stats = run_extract(cfg, out, progress=not quiet)
    n = max(stats.images, 1)
    click.echo(f"wrote {out}: {stats.images} image(s) computed in {stats.wall_s:.1f} s "
               f"({stats.wall_s / n:.3f} s/image; backbone {stats.backbone_s / n:.3f}, proposer {stats.proposer_s / n:.3f} "
               f"(summed over workers), loader wait {stats.loader_wait_s / n:.3f}, write {stats.write_s / n:.3f})")


@click.command("merge")
@click.argument("shards", nargs=-1, type=click.Path())
@click.option("--out", type=click.Path(), required=True, help="Merged cache file.")
def merge_command(shards, out):
    """Merge `iagcn extract --shard i/n` outputs into one cache (checks they are complete and consistent)."""
    from iagcn.extract.pipeline import merge_shards

    click.echo(f"wrote {merge_shards(list(shards), out)}")


COMMANDS += [extract_command, merge_command]
