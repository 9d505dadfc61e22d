"""`iagcn` subcommands of the `extract` stage. Each command module lists its click commands in COMMANDS."""
from __future__ import annotations

from pathlib import Path

import click

from iagcn.extract.config import ExtractConfig
from iagcn.extract.synth import synth_command
from iagcn.options import config_option, device_option, given

COMMANDS: list = [synth_command]


E = ExtractConfig


@click.command("extract")
@click.option("--dataset", type=click.Choice(["voc", "coco", "csv"]), required=True, help="Dataset reader.")
@click.option("--root", type=click.Path(), required=True, help="Dataset root folder.")
@click.option("--split", required=True, help="Split name (VOC: trainval/test; COCO: train2014/val2014; csv: a name).")
@click.option("--out", type=click.Path(), default=None, help="Cache file [default: cache/<dataset>/<split>.h5].")
@config_option(E, "backbone", type=click.Choice(["efficientnet-lite0", "resnet101"]), help="Backbone network.")
@config_option(E, "weights",
               help="imagenet (efficientnet-lite0: bundled file; resnet101: torchvision download), none, or a state-dict path.")
@config_option(E, "proposer", type=click.Choice(["selective-search", "torchvision", "detectron2"]),
               help="Region proposer.")
@config_option(E, "proposer_weights", help="torchvision: coco | none | PATH; detectron2: zoo | none | PATH (.pkl or .pth).",
               none_means="the proposer's own: coco / zoo")
@config_option(E, "proposer_image_size", type=int, help="Proposer resolution.",
               none_means="selective search: longer side 256; RPN: shorter side 800")
@config_option(E, "detectron2_config", help="Detectron2 model-zoo config name or a local YAML path.")
@config_option(E, "num_rois", type=int, help="Proposals per image (N).")
@config_option(E, "image_size", type=int, help="Backbone input side.",
               none_means="the backbone's own: resnet101 448, efficientnet-lite0 320")
@config_option(E, "label_embeddings", help="glove:PATH | onehot | npy:PATH.")
@config_option(E, "batch_size", type=int, help="Images per backbone batch.")
@config_option(E, "block_rows", type=int, help="Rows per committed part (resume granularity; shards are whole blocks).")
@config_option(E, "workers", type=int, help="DataLoader worker processes.")
@device_option(E, what="the backbone and the proposer")
@config_option(E, "threads", type=int, help="torch threads in the main process (0: torch's default).")
@config_option(E, "shard", help="i/n: extract shard i of n (merge with `iagcn merge`).", none_means="the whole split")
@config_option(E, "skip_bad", is_flag=True, help="Skip images that fail pre-flight (recorded in the cache).")
@config_option(E, "csv", "--csv", type=click.Path(), help="csv dataset: the image,labels file.")
@config_option(E, "classes", help="csv dataset: class list (comma-separated) or a file of names.",
               none_means="the sorted labels found in the CSV")
@click.option("--classes-from", "classes_from", type=click.Path(dir_okay=False), default=None,
              help="csv dataset: use the class list of this cache (e.g. the train split's), so that both caches agree.")
@config_option(E, "label_sep", "--label-sep",
               help="csv dataset: delimiter between the labels of a row (' ' = any whitespace; e.g. ';' or '|').")
@config_option(E, "keep_empty", is_flag=True, help="coco: keep images without annotations.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Set any ExtractConfig field, e.g. --set roi_output_size=5 --set roi_sampling_ratio=1 "
                   "(applied after the options above).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def extract_command(dataset, root, split, out, sets, quiet, classes_from, **options):
    """Extract backbone + ROI features of one dataset split into an HDF5 cache (resumable; rerun to resume)."""
    from iagcn.configio import apply_overrides
    from iagcn.device import resolve_device
    from iagcn.extract.config import parse_shard
    from iagcn.extract.pipeline import run_extract

    from iagcn.errors import UserError
    from iagcn.extract.preflight import classes_from_cache

    if classes_from is not None:
        if options.get("classes") is not None:
            raise UserError("--classes and --classes-from both name a class list; pass one")
        if dataset != "csv":
            raise UserError(f"--classes-from applies to --dataset csv only, not {dataset}; drop it")
        options["classes"] = classes_from_cache(classes_from)
    if options.get("label_sep") == "":
        raise UserError("--label-sep is empty; pass the delimiter between labels, e.g. ';' (' ' = whitespace)")
    cfg = ExtractConfig(dataset=dataset, root=str(root), split=split, **given(**options))
    cfg = apply_overrides(cfg, sets)
    resolve_device(cfg.device)                       # refuse a bad --device before reading the dataset
    sh = parse_shard(cfg.shard)
    if out is None:
        suffix = "" if sh is None else f".shard{sh[0]}of{sh[1]}"
        out = Path("cache") / cfg.dataset / f"{cfg.split}{suffix}.h5"
    stats = run_extract(cfg, out, progress=not quiet, log=lambda m: click.echo(m, err=True))
    if stats.already_complete:
        click.echo(f"kept {out}: already complete for this config, nothing computed")
        return
    n = max(stats.images, 1)
    click.echo(f"wrote {out}: {stats.images} image(s) computed in {stats.wall_s:.1f} s "
               f"({stats.wall_s / n:.3f} s/image; backbone {stats.backbone_s / n:.3f}, proposer {stats.proposer_s / n:.3f} "
               f"(summed over workers), loader wait {stats.loader_wait_s / n:.3f}, write {stats.write_s / n:.3f})")


@click.command("merge")
@click.argument("shards", nargs=-1, type=click.Path())
@click.option("--out", type=click.Path(), required=True, help="Merged cache file.")
def merge_command(shards, out):
    """Merge `iagcn extract --shard i/n` outputs into one cache (checks they are complete and consistent)."""
    from iagcn.extract.merge import merge_shards

    click.echo(f"wrote {merge_shards(list(shards), out)}")


COMMANDS += [extract_command, merge_command]
