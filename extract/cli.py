"""`iagcn` subcommands of the `extract` stage. Each command module lists its click commands in COMMANDS."""
from __future__ import annotations

import click  # noqa: F401

COMMANDS: list = []
