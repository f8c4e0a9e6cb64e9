"""Suite part `inference`: forward throughput of our Flax BERT against transformers' PyTorch BERT.

Shapes student (4L-312), teacher (6L-384) and BERT-base (12L-768), batch 1
and 64, sequence 64 and 128 (`--quick`: tiny shapes, batch 1 and 8,
sequence 16); deterministic forward of a classification model. Ours:
`distill.train.logits_step`, jitted; PyTorch: `model(...)` in
`torch.inference_mode()` with transformers' default attention (recorded).
Both in their own process, same weights and threads (see `bench.compare`);
ratio = our examples/s over PyTorch's.
"""

from __future__ import annotations

import functools

from bench import compare
from bench.compare import INPUTS, Case

SHAPE_ORDER = ("student", "teacher", "base")  # cheapest first: a time budget cuts from the end


def cases(quick: bool) -> list[Case]:
    batches, seqs = ((1, 8), (16,)) if quick else ((1, 64), (64, 128))
    return [Case("infer", shape, b, t) for shape in SHAPE_ORDER for t in seqs for b in batches]


def ours_forward(arch, params, batch: dict):
    """(step, carry) for `time_steps`: one jitted forward; the step returns (carry, logits)."""
    import jax

    from distill.modeling import build_model
    from distill.train import logits_step

    forward = jax.jit(functools.partial(logits_step, model=build_model(arch, compare.HEAD, compare.NUM_LABELS)))
    params, inputs = jax.device_put((params, {k: batch[k] for k in INPUTS}))
    return (lambda carry: (carry, forward(params, inputs))), None


def torch_forward(model, batch: dict):
    """A step for `time_steps`: one forward of `model` in inference mode; returns (carry, logits)."""
    import torch

    model.eval()
    inputs = {k: torch.from_numpy(batch[k]).long() for k in INPUTS}

    def step(carry):
        with torch.inference_mode():
            return carry, model(**inputs).logits

    return step


def ratio_rows(comparison: list[dict]) -> list[dict]:
    """The suite table's lines: examples/s of both sides and ours / PyTorch."""
    return [
        {
            "name": f"{c['mode']} {c['shape']} b{c['batch']} s{c['seq']}",
            "ours": c["ours_examples_per_s"], "reference": c["torch_examples_per_s"], "unit": "ex/s",
            "ratio": c["ratio"], "ratio_is": "ours / torch",
        }
        for c in comparison
    ]


def part(ctx) -> dict:
    result = compare.run(cases(ctx.quick), quick=ctx.quick, timing=compare.timing(ctx.quick),
                         deadline=ctx.deadline, weights_dir=ctx.weights_dir)
    return {"timing": compare.timing(ctx.quick), **result, "ratios": ratio_rows(result["comparison"])}
