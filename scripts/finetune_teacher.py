"""Fine-tune a BERT teacher on a task: `bertnas finetune` as a script.

Same flags: `python scripts/finetune_teacher.py --help`.
"""

import sys

from nas.cli import main

if __name__ == "__main__":
    main(["finetune", *sys.argv[1:]])
