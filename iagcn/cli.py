"""The `iagcn` command: a click group whose subcommands live in each stage package's ``cli`` module.

Errors the user can fix (:class:`iagcn.errors.UserError`, click usage errors) print one line and exit
non-zero; a Python traceback appears only with ``iagcn --debug ...``.
"""
from __future__ import annotations

import sys

import click

from iagcn.errors import UserError
from iagcn.fsutil import reset_interrupt_hint, take_interrupt_hint
from iagcn.processes import exit_code_for, forget_interrupts, install_cli_signal_handlers, interrupt_received, \
    restore_signal_handlers


_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


class IagcnGroup(click.Group):
    """A click group that turns UserError / KeyboardInterrupt into one line and an exit code."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        debug = bool(ctx.params.get("debug"))
        reset_interrupt_hint()
        try:
            return super().invoke(ctx)
        except UserError as e:
            if debug:
                raise
            click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt as e:   # Ctrl-C, and SIGTERM (processes.Terminated)
            if debug:
                raise
            click.echo(_interrupt_line(), err=True)
            code = exit_code_for(e)
            forget_interrupts()  # reported: main() must not report it again
            ctx.exit(code)

    def main(self, *args, **kwargs):  # type: ignore[override]
        """Run the group; every failure becomes ONE line on stderr and a non-zero exit (usage errors too)."""
        argv = kwargs.get("args")
        argv = list(sys.argv[1:] if argv is None else argv)
        debug = "--debug" in argv[:1]
        standalone = kwargs.pop("standalone_mode", True)
        owned = install_cli_signal_handlers()  # SIGTERM like Ctrl-C; interrupts recorded so a swallowed one still counts
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
            if interrupt_received() is not None and rv in (0, None):
                # a library swallowed the interrupt and the command ran to its end; every commit re-checks for an
                # interrupt (processes.raise_if_interrupted), so all of its outputs were committed before it came
                click.echo("interrupted: the command had already finished (its outputs are complete)", err=True)
                rv = exit_code_for(None)
            forget_interrupts()  # reported (or the command failed and said why): never a second line
        except (click.exceptions.Abort, KeyboardInterrupt) as e:  # an interrupt outside a subcommand's body
            if debug and isinstance(e, KeyboardInterrupt):
                raise
            click.echo(_interrupt_line(), err=True)
            code = exit_code_for(e if isinstance(e, KeyboardInterrupt) else e.__cause__ or e.__context__)
        except _NO_ARGS_IS_HELP as e:  # `iagcn` alone: the help text, as click prints it
            click.echo(e.format_message(), err=True)
            code = e.exit_code
        except click.ClickException as e:  # usage errors: bad option values, unknown options, missing arguments
            command = next((a for a in argv if a in self.commands), None)
            where = f"iagcn {command} --help" if command else "iagcn --help"
            text = " ".join(e.format_message().split())
            click.echo(f"error: {text}" + (f" (see `{where}`)" if isinstance(e, click.UsageError) else ""), err=True)
            code = e.exit_code
        except Exception as e:  # noqa: BLE001 -- last-resort one-liner for unexpected errors
            if debug:
                raise
            text = " ".join(str(e).split())
            click.echo(f"error: {type(e).__name__}: {text} (rerun with `iagcn --debug ...` for the traceback)", err=True)
            code = 1
        else:
            if not standalone:
                return rv
            code = rv if isinstance(rv, int) else 0
        finally:
            if owned:
                restore_signal_handlers()
        if not standalone:
            return code
        sys.exit(code)


def _interrupt_line() -> str:
    """The innermost command's one line (what was kept, how to resume), or a generic one."""
    return take_interrupt_hint() or "interrupted: completed work was kept; rerun the same command to resume"


@click.group(cls=IagcnGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--debug", is_flag=True, help="Show Python tracebacks instead of one-line errors.")
@click.version_option(package_name="iagcn")
def main(debug: bool) -> None:
    """IA-GCN: extract features once (stage one), train the heads on the cache (stage two), evaluate (stage three)."""


def _register() -> None:
    from iagcn.cache import cli as cache_cli
    from iagcn.evaluate import cli as evaluate_cli
    from iagcn.extract import cli as extract_cli
    from iagcn.train import cli as train_cli

    for module in (extract_cli, cache_cli, train_cli, evaluate_cli):
        for command in getattr(module, "COMMANDS", []):
            main.add_command(command)


_register()
