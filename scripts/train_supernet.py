"""Train a weight-sharing supernet on a task: `bertnas supernet` as a script.

Same flags: `python scripts/train_supernet.py --help`.
"""

import sys

from nas.cli import main

if __name__ == "__main__":
    main(["supernet", *sys.argv[1:]])
