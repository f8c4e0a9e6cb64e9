"""Quantize an exported student to int8: `bertnas quantize` as a script.

Same flags: `python scripts/quantize.py --help`.
"""

import sys

from nas.cli import main

if __name__ == "__main__":
    main(["quantize", *sys.argv[1:]])
