"""The `iagcn` command: a click group whose subcommands live in each stage package's ``cli`` module.

Errors the user can fix (:class:`iagcn.errors.UserError`, click usage errors) print one line and exit
non-zero; a Python traceback appears only with ``iagcn --debug ...``.
"""
from __future__ import annotations

import sys

import click

from iagcn.errors import UserError


class IagcnGroup(click.Group):
    """A click group that turns UserError / KeyboardInterrupt into one line and an exit code."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        debug = bool(ctx.params.get("debug"))
        try:
            return super().invoke(ctx)
        except UserError as e:
            if debug:
                raise
            click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            if debug:
                raise
            click.echo("interrupted: completed work was kept; rerun the same command to resume", err=True)
            ctx.exit(130)

    def main(self, *args, **kwargs):  # type: ignore[override]
        debug = "--debug" in sys.argv[1:2] or "--debug" in (kwargs.get("args") or [])[:1]
        try:
            return super().main(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 -- last-resort one-liner for unexpected errors
            if debug:
                raise
            click.echo(f"error: {type(e).__name__}: {e} (rerun with `iagcn --debug ...` for the traceback)", err=True)
            sys.exit(1)


@click.group(cls=IagcnGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--debug", is_flag=True, help="Show Python tracebacks instead of one-line errors.")
@click.version_option(package_name="iagcn")
def main(debug: bool) -> None:
    """IA-GCN: extract features once (stage one), train the heads on the cache (stage two), evaluate (stage three)."""


def _register() -> None:
    import cache.cli
    import evaluate.cli
    import extract.cli
    import train.cli

    for module in (extract.cli, cache.cli, train.cli, evaluate.cli):
        for command in getattr(module, "COMMANDS", []):
            main.add_command(command)


_register()
