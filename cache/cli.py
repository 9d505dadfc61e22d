"""`iagcn info`: print what a cache holds and what produced it. (`iagcn merge` lives in extract.cli.)"""
from __future__ import annotations

import click

from iagcn.cache.info import describe


@click.command("info")
@click.argument("cache_file", type=click.Path(dir_okay=False))
def info(cache_file: str) -> None:
    """Print the attributes, dataset shapes and a feature summary of CACHE_FILE."""
    click.echo(describe(cache_file))


COMMANDS: list = [info]
