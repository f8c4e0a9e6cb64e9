"""Errors that mean "the user gave us something wrong", as opposed to bugs.

Command-line tools catch `UserError`, print its one-line message and exit
with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: a file, a flag, a directory or a name."""


class DataError(UserError):
    """A data file is missing or malformed; the message names file and line."""

    def __init__(self, path, problem: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")
