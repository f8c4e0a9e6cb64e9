"""Evaluate a saved model on a task split: `bertnas evaluate` as a script.

Same flags: `python scripts/evaluate.py --help`.
"""

import sys

from nas.cli import main

if __name__ == "__main__":
    main(["evaluate", *sys.argv[1:]])
