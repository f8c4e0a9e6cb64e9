"""Shared plumbing of the command-line tools: logging, errors, exit codes.

A `UserError` (bad file, flag, directory or name) prints one line,
`error: <message>`, and exits with status 2; an interrupted run exits with
130. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable

from tasks.errors import UserError


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("jax._src", "absl", "httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def run(main: Callable[[], int | None]) -> None:
    """Call `main()` and turn user errors into a one-line message and exit 2."""
    try:
        code = main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
