"""Train-step time with and without the CRF (same shapes, interleaved), and dev decoding time.

python bench/crf_step.py  ->  JSON lines: arch, crf, batch x length, median ms per step (fine-tuning step:
forward, backward, clipping, AdamW), and the time to decode logits of the CoNLL dev shape with Viterbi.
"""
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from distill.arch import BertArch, parse_arch_name  # noqa: E402
from distill.model.bert import build_model, init_params  # noqa: E402
from distill.train.optim import OptimizerConfig  # noqa: E402
from distill.train.steps import TrainState, make_supervised_step  # noqa: E402
from tasks.registry import get_task  # noqa: E402

task = get_task("conll2003")
rng = np.random.default_rng(0)
B, T = 32, 64
ids = rng.integers(1000, 30000, size=(B, T)).astype(np.int32)
ids[:, 0] = 101
labels = np.full((B, T), -100, np.int32)
for b in range(B):
    first = np.sort(rng.choice(np.arange(1, T - 1), size=rng.integers(10, 30), replace=False))
    labels[b, first] = rng.integers(0, task.num_labels, size=len(first))
batch = {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": np.ones_like(ids),
         "labels": labels, "weights": np.ones(B, np.float32)}
teacher = BertArch.uniform(6, 384, 12, 1536)
for arch in (parse_arch_name("4L-312", base=teacher), teacher):
    steps = {}
    for crf in (False, True):
        model = build_model(arch, "tagging", task.num_labels, crf=crf)
        params = init_params(model, jax.random.key(0))
        tx = OptimizerConfig(learning_rate=1e-4).build(params, 1000, arch.num_layers)
        fn = make_supervised_step(model, tx, "tagging", task.labels if crf else ())
        state = TrainState.create(params, tx)
        state, m = fn(state, batch, jax.random.key(1))  # compile
        jax.block_until_ready(m)
        steps[crf] = [fn, state, []]
    for _ in range(5):  # interleaved rounds
        for crf in (False, True):
            fn, state, times = steps[crf]
            for _ in range(6):
                t0 = time.perf_counter()
                state, m = fn(state, batch, jax.random.key(1))
                jax.block_until_ready(m)
                times.append(time.perf_counter() - t0)
            steps[crf][1] = state
    for crf in (False, True):
        print(json.dumps({"arch": arch.name, "crf": crf, "batch": [B, T],
                          "median_ms": round(1000 * float(np.median(steps[crf][2])), 1)}), flush=True)

from distill.model import crf as crf_lib  # noqa: E402

N, L, K = 3250, 128, task.num_labels
logits = rng.normal(size=(N, L, K)).astype(np.float32)
pos = np.zeros((N, L), bool)
pos[:, 1:25] = True
params = crf_lib.CrfParams(np.zeros((K, K), np.float32), np.zeros(K, np.float32), np.zeros(K, np.float32))
allowed, start = crf_lib.iob2_constraints(task.labels)
chunk = 256
jax.block_until_ready(crf_lib.decode(params, logits[:chunk], pos[:chunk], allowed, start))
t0 = time.perf_counter()
for lo in range(0, N, chunk):
    e, p = logits[lo:lo + chunk], pos[lo:lo + chunk]
    if len(e) < chunk:
        e = np.concatenate([e, np.zeros((chunk - len(e), L, K), np.float32)])
        p = np.concatenate([p, np.zeros((chunk - len(p), L), bool)])
    jax.block_until_ready(crf_lib.decode(params, e, p, allowed, start))
print(json.dumps({"viterbi_dev_seconds": round(time.perf_counter() - t0, 2), "features": N, "length": L}))
