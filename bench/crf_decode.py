"""Where a CRF tagger's F1 comes from: CoNLL-2003 dev decoded by argmax and by constrained Viterbi.

    python bench/crf_decode.py --data-dir ../shared/data/conll2003 MODEL_DIR [MODEL_DIR ...]

For each saved tagger: entity F1 of the argmax of its per-token scores, and of
Viterbi under the IOB2 constraints with its own CRF scores (zero scores for a
model without a CRF: the constraints alone). One JSON line per model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from distill.model.bert import build_model  # noqa: E402
from distill.model.store import load_bert  # noqa: E402
from distill.run.evaluation import evaluate_model  # noqa: E402
from tasks.features import encode  # noqa: E402
from tasks.readers import load_task, read_split  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="conll2003")
    p.add_argument("--data-dir", required=True)
    p.add_argument("models", nargs="+")
    args = p.parse_args(argv)
    task, data = load_task(args.task, args.data_dir)
    dev_ex = read_split(task, "dev", data)
    k = task.num_labels
    for path in args.models:
        t = load_bert(path)
        dev = encode(task, dev_ex, t.tokenizer)
        params = dict(t.params)
        emissions = {name: v for name, v in params.items() if name != "crf"}
        argmax = evaluate_model(build_model(t.arch, "tagging", k), emissions, task, dev, dev_ex)["f1"]
        params.setdefault("crf", {"transitions": np.zeros((k, k), np.float32), "start": np.zeros(k, np.float32),
                                  "end": np.zeros(k, np.float32)})
        viterbi = evaluate_model(build_model(t.arch, "tagging", k, crf=True), params, task, dev, dev_ex)["f1"]
        print(json.dumps({"model": path, "crf": t.crf, "argmax_f1": argmax, "viterbi_f1": viterbi}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
