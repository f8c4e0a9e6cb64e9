"""Export a student for another runtime (ONNX): `bertnas export` as a script.

Same flags: `python scripts/export.py --help`.
"""

import sys

from nas.cli import main

if __name__ == "__main__":
    main(["export", *sys.argv[1:]])
