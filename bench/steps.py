"""The timed steps of `bench.compare`'s two sides: our jitted forward and train step, PyTorch's.

Each builder returns what `bench.common.time_steps` runs; JAX and PyTorch are imported inside the builders,
since each side runs in its own child process.
"""

from __future__ import annotations

import functools

from bench.common import HEAD, INPUTS, NUM_LABELS, torch_autocast


def ours_forward(arch, params, batch: dict, precision: str = "fp32"):
    """(step, carry) for `time_steps`: one jitted forward (in `precision`); the step returns (carry, logits)."""
    import jax

    from distill.model.bert import build_model, in_precision
    from distill.model.infer import logits_step

    model = in_precision(build_model(arch, HEAD, NUM_LABELS), precision)
    forward = jax.jit(functools.partial(logits_step, model=model))
    params, inputs = jax.device_put((params, {k: batch[k] for k in INPUTS}))
    return (lambda carry: (carry, forward(params, inputs))), None


def torch_forward(model, batch: dict, precision: str = "fp32"):
    """A step for `time_steps`: one forward of `model` in inference mode (under CPU autocast to bfloat16 in
    bf16); returns (carry, logits)."""
    import torch

    model.eval()
    inputs = {k: torch.from_numpy(batch[k]).long() for k in INPUTS}

    def step(carry):
        with torch.inference_mode(), torch_autocast(torch, precision == "bf16"):
            return carry, model(**inputs).logits

    return step


def ours_step(arch, params, batch: dict, precision: str = "fp32"):
    """(step, state) for `time_steps`: `distill.train.steps.make_supervised_step` with our AdamW (clipping at
    1.0), in `precision` (bf16: float32 master weights, as the tools train)."""
    import jax

    from distill.model.bert import build_model, in_precision
    from distill.train.optim import OptimizerConfig
    from distill.train.steps import TrainState, make_supervised_step

    model = build_model(arch, HEAD, NUM_LABELS)
    params = jax.device_put(params)
    tx = OptimizerConfig().build(params, 10_000, arch.num_layers)
    step = make_supervised_step(in_precision(model, precision), tx, HEAD)
    batch, rng = jax.device_put(batch), jax.random.key(0)
    return (lambda state: step(state, batch, rng)), TrainState.create(params, tx)


def torch_step(model, batch: dict, precision: str = "fp32"):
    """A step for `time_steps`: zero_grad, forward + loss (under CPU autocast to bfloat16 in bf16: float32
    weights and optimizer, as PyTorch users train in mixed precision), backward, clip_grad_norm_(1.0), AdamW."""
    import torch

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, eps=1e-6, weight_decay=0.01)
    inputs = {k: torch.from_numpy(batch[k]).long() for k in INPUTS}
    labels = torch.from_numpy(batch["labels"]).long()

    def step(carry):
        opt.zero_grad(set_to_none=True)
        with torch_autocast(torch, precision == "bf16"):
            loss = model(**inputs, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return carry, loss

    return step
