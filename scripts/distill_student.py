"""Distil a BERT teacher into a compact student for one task: `bertnas distill` as a script.

Same flags: `python scripts/distill_student.py --help`.
"""

import sys

from nas.cli import main

if __name__ == "__main__":
    main(["distill", *sys.argv[1:]])
