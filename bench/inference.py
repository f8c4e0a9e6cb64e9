"""Suite part `inference`: forward throughput of our Flax BERT against transformers' PyTorch BERT.

Shapes student (4L-312), teacher (6L-384) and BERT-base (12L-768), batch 1
and 64, sequence 64 and 128 (`--quick`: tiny shapes, batch 1 and 8,
sequence 16); deterministic forward of a classification model. Ours:
`distill.model.infer.logits_step`, jitted; PyTorch: `model(...)` in
`torch.inference_mode()` with transformers' default attention (recorded).
Both in their own process, same weights and threads (see `bench.compare`);
ratio = our examples/s over PyTorch's.
"""

from __future__ import annotations

from bench import compare
from bench.compare import Case, ratio_rows

SHAPE_ORDER = ("student", "teacher", "base")  # cheapest first: a time budget cuts from the end


def cases(quick: bool) -> list[Case]:
    batches, seqs = ((1, 8), (16,)) if quick else ((1, 64), (64, 128))
    return [Case("infer", shape, b, t) for shape in SHAPE_ORDER for t in seqs for b in batches]


def part(ctx) -> dict:
    result = compare.run(cases(ctx.quick), quick=ctx.quick, timing=compare.timing(ctx.quick),
                         deadline=ctx.deadline, weights_dir=ctx.weights_dir)
    return {"timing": compare.timing(ctx.quick), **result, "ratios": ratio_rows(result["comparison"])}
