"""Predict with a saved model, one JSON line per input line: `bertnas predict` as a script.

Same flags: `python scripts/predict.py --help`.
"""

import sys

from nas.cli import main

if __name__ == "__main__":
    main(["predict", *sys.argv[1:]])
