"""Search compact students for one task: `bertnas search` as a script.

Same flags: `python scripts/search.py --help`.
"""

import sys

from nas.cli import main

if __name__ == "__main__":
    main(["search", *sys.argv[1:]])
