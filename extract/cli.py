"""`iagcn` subcommands of the `extract` stage. Each command module lists its click commands in COMMANDS."""
from __future__ import annotations

import click  # noqa: F401

from extract.synth import synth_command

COMMANDS: list = [synth_command]
