"""The one exception type that the CLI turns into a one-line message and a non-zero exit."""
from __future__ import annotations


class UserError(Exception):
    """Bad input or environment the user can fix: the message names the file or option and what to do.

    The CLI prints ``error: <message>`` on one line and exits with ``exit_code`` (no traceback unless --debug).
    """

    exit_code = 2

    def __init__(self, message: str, *, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code
