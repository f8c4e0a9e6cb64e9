"""Suite part `realdata`: end-to-end examples/s on real sentences, ours against transformers + PyTorch.

  python -m bench --only realdata                       # SST-2, STS-B, CoNLL-2003; the minilm teacher
  python -m bench.realdata --task sst2 --steps 300      # one task, printed as a table
  python -m bench.realdata --task sst2 --workloads label --label-limit 0   # labelling all of SST-2 train only

Workloads, each on the task's real training sentences with the `minilm` teacher (6L-384) and the same
tokenized features on both sides, each side in its own child process pinned to the same CPUs:

  finetune  `--steps` supervised steps at batch 32 (AdamW 1e-4, global-norm clipping at 1.0, dropout on):
            ours is `distill.train.steps.make_supervised_step` on `tasks.batching` batches (shuffled,
            length-bucketed), PyTorch a plain loop over length-grouped batches padded to their own
            longest sentence (transformers' `group_by_length`: megabatches of 50 batches sorted by
            length), as `DataCollatorWithPadding` does;
  distill   `--steps` distillation steps of a 4L-312 student (`STUDENT`, random weights) on cached teacher
            logits, on the same batches: ours is `make_train_step` with each batch's logits gathered from an
            `OutputCache` in the loop, as `bertnas distill` trains after labelling; PyTorch the same student
            as a transformers BERT with soft cross-entropy against the logits (MSE for regression);
  label     forwards at batch 128 over the first `--label-limit` training features (the teacher's
            labelling pass): ours through our buckets, PyTorch sorted by length and padded per batch.

Ours runs up to five ways (`--strategies`): `before`, with the fixed bucket lengths (`default_buckets`:
16, 32, 48, 64, 96, 128) and bucket-by-bucket batches everywhere (the batching before this benchmark
existed); `after`, with the lengths fitted to the data (`buckets_for`) and inference batches in length
order (`batch_plan` without shuffling); `after-bf16`, `after` in bfloat16 compute (`--precision bf16`:
bfloat16 matmul operands, float32 accumulation, float32 master weights in training; the teacher labels in
it too); `packed`, several sentences per row (`tasks.packing`, the tools' default for sentence tasks on
one CPU device; taggers skip it), and `packed-bf16`, that in bfloat16. Batches
are assembled inside the timed loop on both sides; every bucket shape is compiled before the clock starts
(a warm-up step per shape on a throwaway state), as the persistent compilation cache makes it for any
later run. Reported: examples/s, tokens computed per real token, ours / PyTorch.

Where JAX and PyTorch see a GPU, both sides run on it: ours as the tools run there (attention-probability
dropout off, `--attention-dropout auto`; cuDNN's fused attention in `after-bf16`), PyTorch under bfloat16
autocast with its attention dropout off likewise. `--teacher DIR` measures another teacher (any BERT
directory; the weights do not change the speed), `--limit N` the first N training sentences only. On the
CPU PyTorch runs in float32 (the plain loop), or under CPU autocast to bfloat16 with `--torch-precision bf16`
(the like-for-like comparison with ours in bf16 on CPUs with AMX or AVX512-BF16).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

from bench.common import Skip, child_main, cpu_info, cpu_threads, run_child, torch_autocast
from distill.cli.host import retain_freed_memory

TASKS = {"sst2": "glue/SST-2", "stsb": "glue/STS-B", "conll2003": "conll2003"}
STUDENT = "4L-312"
"""The student of the distillation workload (TinyBERT-4's shape)."""
WORKLOADS = ("finetune", "distill", "label")
STRATEGIES = ("before", "after", "after-bf16", "packed", "packed-bf16")
"""before: the fixed buckets and bucket-by-bucket batches for every workload; after: buckets fitted to the data,
and inference batches in length order; after-bf16: `after` in bfloat16 compute (`--precision bf16`); packed:
several sentences per row (`tasks.packing`, sentence-level tasks only), packed-bf16 likewise in bfloat16."""


def _features(request: dict):
    """The task's training features (our tokenizer, our encoding: both sides compute on the same tokens)."""
    from transformers import AutoTokenizer

    from tasks.features import encode
    from tasks.readers import read_split
    from tasks.registry import get_task

    task = get_task(request["task"])
    examples = read_split(task, "train", request["data_dir"], limit=request.get("limit"))
    tokenizer = AutoTokenizer.from_pretrained(request["teacher_dir"])
    return task, encode(task, examples, tokenizer)


# ----------------------------------------------------------------------------------------------- ours


def _ours(request: dict) -> dict:
    retain_freed_memory()  # as `bertnas` runs: before JAX starts its threads
    import jax

    from distill.model.bert import in_precision
    from distill.model.infer import token_cap
    from distill.model.store import load_bert
    from distill.run import OptimizerConfig
    from distill.train.steps import TrainState, make_supervised_step
    from tasks.batching import buckets_for, default_buckets
    from tasks.packing import packable, packing_pays

    task, features = _features(request)
    teacher = load_bert(request["teacher_dir"], head=task.kind, num_labels=task.num_labels, seed=0)
    dropout = jax.default_backend() == "cpu"  # the tools' `--attention-dropout auto`: off on GPUs and TPUs
    out = {}
    for strategy in request.get("strategies") or STRATEGIES:
        packed = strategy.startswith("packed")
        if packed and not packable(features):
            out[strategy] = {"skipped": f"{task.kind} features do not pack"}
            continue
        buckets = default_buckets(features.max_length) if strategy == "before" else buckets_for(features)
        tx = OptimizerConfig(learning_rate=1e-4).build(teacher.params, request["steps"], teacher.arch.num_layers)
        precision = "bf16" if strategy.endswith("bf16") else "fp32"
        step = make_supervised_step(in_precision(teacher.model, precision, attention_dropout=dropout), tx, task.kind)
        fresh = lambda: TrainState.create(jax.device_put(teacher.params), tx)  # noqa: E731
        # the training batches are planned over every sentence: only for the workloads that train
        train = functools.cache(lambda: (_packed(features, 32, True) if packed
                                         else _bucketed(features, 32, buckets, True))[: request["steps"]])
        label = _first(features, request["label_limit"])
        tokens = None if strategy == "before" else token_cap()  # the tools' labelling batches (`_labelling_batches`)
        label = _packed(label, 128, False) if packed else _bucketed(label, 128, buckets, strategy == "before", tokens)
        timed = {"finetune": lambda: _timed_steps(step, fresh, train(), jax.random.key(0)),
                 "distill": lambda: _timed_distill(task, teacher.arch, features, train(), precision, dropout),
                 "label": lambda: _timed_labelling(in_precision(teacher.model, precision), teacher.params, label)}
        out[strategy] = {"buckets": list(buckets), "precision": precision,
                         **{w: timed[w]() for w in _workloads(request)}}
    # what the training tools' `--packing auto` picks for these features (on one CPU device, batch 32)
    auto = "packed" if packable(features) and packing_pays(features, 32) else "after"
    return {"side": "ours", "device": jax.devices()[0].device_kind, "attention_dropout": dropout,
            "packing_auto": auto, **out}


def _workloads(request: dict) -> tuple[str, ...]:
    """The workloads a request asks for, in `WORKLOADS` order (all of them by default)."""
    return tuple(w for w in WORKLOADS if w in (request.get("workloads") or WORKLOADS))


def _timed_distill(task, teacher_arch, features, batches: list[tuple], precision: str, dropout: bool) -> dict:
    """`STUDENT` distilled from cached teacher logits over `batches`, as `bertnas distill` trains after its
    labelling pass: the train step (soft cross-entropy, MSE for regression) and the host-side gather of
    each batch's teacher outputs (`OutputCache.gather`) in the timed loop."""
    import jax

    from distill.arch import parse_arch_name
    from distill.kd.objective import LossConfig
    from distill.kd.outputs import OutputCache
    from distill.model.bert import build_model, in_precision, init_params
    from distill.run import OptimizerConfig
    from distill.train.steps import TrainState, make_train_step

    arch = parse_arch_name(STUDENT, teacher_arch)
    student = build_model(arch, task.kind, task.num_labels)
    params = jax.device_get(init_params(student, jax.random.key(0)))  # on the host: each fresh state is a copy
    tx = OptimizerConfig(learning_rate=1e-4).build(params, len(batches), arch.num_layers)
    step = make_train_step(in_precision(student, precision, attention_dropout=dropout), None, tx, task.kind,
                           LossConfig(), (), "all")
    cache = OutputCache(*_teacher_logits(task, features), token_level=task.kind == "tagging")
    taught = [(shape, functools.partial(_with_teacher, make, cache), lengths, computed)
              for shape, make, lengths, computed in batches]
    fresh = lambda: TrainState.create(jax.device_put(params), tx)  # noqa: E731
    return _timed_steps(lambda st, bt, rng: step(st, bt[0], rng, bt[1]), fresh, taught, jax.random.key(0))


def _with_teacher(make, cache) -> tuple:
    batch = make()
    return batch, cache.gather(batch)


def _teacher_logits(task, features):
    """Random stand-ins for the teacher's cached logits (the speed does not depend on them): (logits, offsets)."""
    import numpy as np

    offsets = np.concatenate([[0], np.cumsum(features.lengths, dtype=np.int64)])
    rows = int(offsets[-1]) if task.kind == "tagging" else len(features)
    width = 1 if task.kind == "regression" else task.num_labels
    return np.random.default_rng(0).normal(size=(rows, width)).astype(np.float32), offsets


def _bucketed(features, batch_size: int, buckets, shuffle: bool, tokens: int | None = None) -> list[tuple]:
    """(shape, make batch, real features, tokens computed) per batch of length-bucketed batches (`shuffle`:
    bucket by bucket, in a shuffled order, as training takes them; else in length order, `tokens` a batch
    at most)."""
    from tasks.batching import batch_plan, collate

    plan = batch_plan(features, batch_size, buckets=buckets, shuffle=shuffle, tokens=tokens)
    return [((len(rows), length), functools.partial(collate, features, rows, length),
             features.lengths[rows[rows >= 0]], length * len(rows)) for length, rows in plan]


def _packed(features, batch_size: int, shuffle: bool) -> list[tuple]:
    """`_bucketed`'s rows for packed batches (`tasks.packing`: `batch_size` examples per batch on average)."""
    from tasks.packing import collate_packed, pack_shape, packed_plan

    shape = pack_shape(features, batch_size)
    return [((shape.rows, shape.length), functools.partial(collate_packed, features, plan, shape),
             features.lengths[plan[plan[:, 0] >= 0, 0]], shape.rows * shape.length)
            for plan in packed_plan(features, shape, shuffle=shuffle)]


def _one_per_shape(batches: list[tuple]) -> list[dict]:
    """A batch of each distinct shape: the warm-up before the clock starts."""
    return [next(b for b in batches if b[0] == shape)[1]() for shape in sorted({b[0] for b in batches})]


def _timed_steps(step, fresh_state, batches: list[tuple], rng) -> dict:
    """Training steps over `batches` (`_bucketed` / `_packed`) timed end to end, batches assembled in the loop
    as `fit` does (one sync at the end), after one warm-up step per shape on a throwaway state."""
    import jax

    warm = fresh_state()
    for batch in _one_per_shape(batches):
        warm, m = step(warm, batch, rng)
    jax.block_until_ready(m)
    del warm
    state = fresh_state()
    t0 = time.perf_counter()
    for _, make, _, _ in batches:
        state, m = step(state, make(), rng)
    jax.block_until_ready(m)
    return _rates(batches, time.perf_counter() - t0)


def _timed_labelling(model, params, batches: list[tuple]) -> dict:
    """Forwards over `batches` (the first `--label-limit` features), each batch's logits fetched to the host
    as the teacher's labelling does."""
    import jax
    import numpy as np

    from distill.model.infer import _jitted_logits

    fn = _jitted_logits(model)
    params = jax.device_put(params)
    for batch in _one_per_shape(batches):
        jax.block_until_ready(fn(params, batch))
    t0 = time.perf_counter()
    for _, make, _, _ in batches:
        np.asarray(fn(params, make()))
    return _rates(batches, time.perf_counter() - t0)


def _first(features, n: int):
    from distill.kd.outputs import rows

    return rows(features, 0, min(n, len(features)))


def _rates(batches: list[tuple], seconds: float) -> dict:
    examples = sum(len(lengths) for _, _, lengths, _ in batches)
    real = sum(int(lengths.sum()) for _, _, lengths, _ in batches)
    return {"examples_per_s": examples / seconds, "examples": examples, "seconds": seconds, "batches": len(batches),
            "tokens_per_real_token": sum(b[3] for b in batches) / real, "shapes": len({b[0] for b in batches})}


# -------------------------------------------------------------------------------------------- PyTorch


def _torch(request: dict) -> dict:
    try:
        import torch
        from transformers import BertForSequenceClassification, BertForTokenClassification
    except ImportError as e:
        raise Skip(f"PyTorch side skipped: {e}") from None
    torch.set_num_threads(cpu_threads())
    torch.manual_seed(0)
    task, features = _features(request)
    num_labels = 1 if task.kind == "regression" else task.num_labels
    cls = BertForTokenClassification if task.kind == "tagging" else BertForSequenceClassification
    cuda = torch.cuda.is_available()
    # On a GPU, as ours there: bfloat16 autocast, no attention-probability dropout (fused attention).
    extra = {"attention_probs_dropout_prob": 0.0} if cuda else {}
    model = cls.from_pretrained(request["teacher_dir"], num_labels=num_labels, **extra).to("cuda" if cuda else "cpu")
    bf16 = cuda or request.get("torch_precision") == "bf16"
    autocast = functools.partial(torch_autocast, torch, bf16, "cuda" if cuda else "cpu")
    timed = {"finetune": lambda: _torch_finetune(model, features, request["steps"], torch, autocast),
             "label": lambda: _torch_label(model, _first_torch(features, request["label_limit"]), torch, autocast),
             "distill": lambda: _torch_distill(_torch_student(cls, model.config, num_labels, torch), task, features,
                                               request["steps"], torch, autocast)}
    return {"side": "torch", "torch": torch.__version__, "threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name() if cuda else "cpu", "precision": "bf16" if bf16 else "fp32",
            "attn_implementation": model.config._attn_implementation,
            **{w: timed[w]() for w in ("finetune", "label", "distill") if w in _workloads(request)}}


def _torch_student(cls, teacher_config, num_labels: int, torch):
    """`STUDENT` as a transformers BERT (random weights; the teacher's vocabulary and positions)."""
    from distill.arch import parse_arch_name

    arch = parse_arch_name(STUDENT)
    config = teacher_config.__class__(**{**teacher_config.to_dict(), "num_hidden_layers": arch.num_layers,
                                         "hidden_size": arch.hidden_size, "num_attention_heads": arch.num_heads[0],
                                         "intermediate_size": arch.ffn_sizes[0], "num_labels": num_labels})
    return cls(config).to("cuda" if torch.cuda.is_available() else "cpu")


def _torch_distill(model, task, features, steps: int, torch, autocast) -> dict:
    """The student trained on the teacher's cached logits over length-grouped, dynamically padded batches:
    soft cross-entropy against the teacher's distribution (MSE for regression), tagging per real token."""
    logits, offsets = _teacher_logits(task, features)

    def loss(batch, rows):
        target = _teacher_targets(logits, offsets, rows, batch["input_ids"].shape[1], task.kind == "tagging", torch)
        with autocast():
            out = model(**batch).logits.float()
        return _kd_loss(out, target.to(out.device), batch["attention_mask"], task.kind, torch)

    return _torch_train(model, features, steps, loss, torch)


def _teacher_targets(logits, offsets, rows, length: int, token_level: bool, torch):
    if not token_level:
        return torch.as_tensor(logits[rows])
    out = torch.zeros((len(rows), length, logits.shape[1]))
    for r, i in enumerate(rows):
        out[r, : offsets[i + 1] - offsets[i]] = torch.as_tensor(logits[offsets[i] : offsets[i + 1]])
    return out


def _kd_loss(student, teacher, mask, kind: str, torch):
    if kind == "regression":
        return torch.mean((student[:, 0] - teacher[:, 0]) ** 2)
    ce = -(torch.softmax(teacher, -1) * torch.log_softmax(student, -1)).sum(-1)
    if kind == "tagging":
        return (ce * mask).sum() / mask.sum()
    return ce.mean()


def _sync(torch) -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _first_torch(features, n: int) -> tuple[list, list]:
    """The first `n` features' token ids and token types."""
    n = min(n, len(features))
    return list(features.input_ids[:n]), list(features.token_type_ids[:n])


def _grouped(lengths, batch_size: int, seed: int = 0) -> list:
    """transformers' `group_by_length` order: shuffled, then sorted by length (longest first) within
    megabatches of 50 batches."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(len(lengths))
    mega = 50 * batch_size
    out = []
    for lo in range(0, len(order), mega):
        chunk = sorted(order[lo: lo + mega], key=lambda i: -lengths[i])
        out += [chunk[i: i + batch_size] for i in range(0, len(chunk), batch_size)]
    return out


def _pad(ids, types, rows, torch) -> dict:
    longest = max(len(ids[i]) for i in rows)
    x = torch.zeros((len(rows), longest), dtype=torch.long)
    t, m = torch.zeros_like(x), torch.zeros_like(x)
    for r, i in enumerate(rows):
        n = len(ids[i])
        x[r, :n], t[r, :n], m[r, :n] = torch.as_tensor(ids[i]), torch.as_tensor(types[i]), 1
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return {"input_ids": x.to(device), "token_type_ids": t.to(device), "attention_mask": m.to(device)}


def _torch_finetune(model, features, steps: int, torch, autocast) -> dict:
    """The model fine-tuned on the gold labels (transformers' own loss)."""

    def loss(batch, rows):
        with autocast():
            labels = _targets(features, rows, batch["input_ids"].shape[1], torch).to(batch["input_ids"].device)
            return model(**batch, labels=labels).loss

    return _torch_train(model, features, steps, loss, torch)


def _torch_train(model, features, steps: int, loss_fn, torch) -> dict:
    """`steps` AdamW steps (1e-4, clipping at 1.0) on `loss_fn(batch, rows)` over length-grouped batches of 32
    padded to their own longest sentence, timed end to end."""
    ids, types = list(features.input_ids), list(features.token_type_ids)
    plan = _grouped(features.lengths, 32)[:steps]
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=torch.cuda.is_available() or None)
    computed = real = examples = 0
    t0 = time.perf_counter()
    for rows in plan:
        batch = _pad(ids, types, rows, torch)
        loss = loss_fn(batch, rows)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        computed += batch["input_ids"].numel()
        real += int(batch["attention_mask"].sum())
        examples += len(rows)
    _sync(torch)
    seconds = time.perf_counter() - t0
    return {"examples_per_s": examples / seconds, "seconds": seconds, "batches": len(plan),
            "tokens_per_real_token": computed / real}


def _targets(features, rows, length: int, torch):
    """The batch's labels as transformers takes them: class ids, float scores, or tags padded with -100."""
    import numpy as np

    if isinstance(features.labels, list):  # tagging: per token, -100 where no tag is scored
        out = torch.full((len(rows), length), -100, dtype=torch.long)
        for r, i in enumerate(rows):
            out[r, : len(features.labels[i])] = torch.as_tensor(np.asarray(features.labels[i], np.int64))
        return out
    target = torch.as_tensor(np.asarray(features.labels)[rows])
    return target.float() if target.is_floating_point() else target.long()


def _torch_label(model, data, torch, autocast) -> dict:
    ids, types = data
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    plan = [order[i: i + 128] for i in range(0, len(order), 128)]
    model.eval()
    computed = real = 0
    t0 = time.perf_counter()
    with torch.inference_mode(), autocast():
        for rows in plan:
            batch = _pad(ids, types, rows, torch)
            model(**batch).logits.float().cpu()  # to the host, as a labelling pass keeps them
            computed += batch["input_ids"].numel()
            real += int(batch["attention_mask"].sum())
    _sync(torch)
    seconds = time.perf_counter() - t0
    return {"examples_per_s": len(ids) / seconds, "examples": len(ids), "seconds": seconds, "batches": len(plan),
            "tokens_per_real_token": computed / real}


# ----------------------------------------------------------------------------------------------- suite


def measure(request: dict) -> dict:
    return _torch(request) if request["side"] == "torch" else _ours(request)


def run(task: str, data_root: Path, *, steps: int, label_limit: int, limit: int | None = None,
        threads: int | None = None, teacher: str = "minilm", strategies: tuple[str, ...] = STRATEGIES,
        torch_precision: str = "fp32", workloads: tuple[str, ...] = WORKLOADS, reference: bool = True) -> dict:
    """Both sides on one task (PyTorch's only with `reference`); the ratios of ours (each bucket strategy)
    over PyTorch, for each of `workloads`."""
    from distill.model.store import resolve_model_dir

    label_limit = label_limit or 2**62  # 0: every training sentence
    data_dir = data_root / TASKS[task]
    if not data_dir.is_dir():
        raise Skip(f"no {task} data at {data_dir}")
    request = {"task": task, "data_dir": str(data_dir), "teacher_dir": str(resolve_model_dir(teacher)),
               "steps": steps, "label_limit": label_limit, "limit": limit, "threads": threads or cpu_threads(),
               "accelerator": True,  # ours on a GPU where there is one, as the tools run
               "strategies": list(strategies), "torch_precision": torch_precision, "workloads": list(workloads)}
    ours = run_child("bench.realdata", {**request, "side": "ours"})
    try:
        torch = run_child("bench.realdata", {**request, "side": "torch"}) if reference else {"skipped": "not asked for"}
    except Skip as e:
        torch = {"skipped": str(e)}
    except Exception as e:  # noqa: BLE001 - a failed reference must not lose our side's figures
        torch = {"skipped": f"PyTorch side failed: {type(e).__name__}: {str(e)[:800]}"}
    return {"task": task, "request": request, "cpu": cpu_info(), "ours": ours, "torch": torch,
            "ratios": ratio_rows(task, ours, torch)}


def ratio_rows(task: str, ours: dict, torch: dict) -> list[dict]:
    rows = []
    for workload in WORKLOADS:
        ref = (torch.get(workload) or {}).get("examples_per_s")
        for strategy in STRATEGIES:
            if workload not in ours.get(strategy, {}):  # not asked for, or skipped (features that do not pack)
                continue
            mine = ours[strategy][workload]
            rows.append({
                "name": f"{task} {workload} ({strategy})", "ours": mine["examples_per_s"],
                "reference": ref, "unit": "ex/s", "ratio": mine["examples_per_s"] / ref if ref else None,
                "ratio_is": "ours / torch", "tokens_per_real_token": mine["tokens_per_real_token"],
                "torch_tokens_per_real_token": (torch.get(workload) or {}).get("tokens_per_real_token"),
            })
    return rows


def part(ctx) -> dict:
    data_root = Path(ctx.data_root)
    quick = {"steps": 4, "label_limit": 256, "limit": 512} if ctx.quick else {"steps": 200, "label_limit": 4096}
    results = {}
    for task in (("sst2",) if ctx.quick else tuple(TASKS)):
        if ctx.deadline and time.time() > ctx.deadline:
            results[task] = {"skipped": "suite time budget spent"}
            continue
        results[task] = run(task, data_root, **quick)
    if not any("ratios" in r for r in results.values()):
        raise Skip(next(iter(results.values())).get("skipped", "no task ran"))
    return {"tasks": results, "ratios": [row for r in results.values() for row in r.get("ratios", [])]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="sst2", choices=sorted(TASKS))
    p.add_argument("--data-root", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--label-limit", type=int, default=4096, help="sentences labelled (0: all; default %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="the first N training sentences only")
    p.add_argument("--teacher", default="minilm", help="teacher model directory or alias (default %(default)s)")
    p.add_argument("--strategies", default=",".join(STRATEGIES),
                   help=f"our batchings to measure, comma-separated (default all: {','.join(STRATEGIES)})")
    p.add_argument("--torch-precision", default="fp32", choices=["fp32", "bf16"],
                   help="PyTorch's compute on the CPU: fp32 (default, the plain loop) or bf16 (torch.autocast to "
                   "bfloat16, float32 weights and AdamW); on a GPU it always runs under bfloat16 autocast")
    p.add_argument("--workloads", default=",".join(WORKLOADS),
                   help=f"which workloads, comma-separated (default all: {','.join(WORKLOADS)})")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    strategies = tuple(s for s in args.strategies.split(",") if s)
    if not strategies or set(strategies) - set(STRATEGIES):
        p.error(f"--strategies: choose among {','.join(STRATEGIES)}")
    workloads = tuple(w for w in args.workloads.split(",") if w)
    if not workloads or set(workloads) - set(WORKLOADS):
        p.error(f"--workloads: choose among {','.join(WORKLOADS)}")
    result = run(args.task, args.data_root, steps=args.steps, label_limit=args.label_limit, limit=args.limit,
                 teacher=args.teacher, strategies=strategies, torch_precision=args.torch_precision,
                 workloads=workloads)
    print(f"{'workload':<34} {'ours ex/s':>10} {'torch ex/s':>10} {'ratio':>6} {'tok/real':>8} {'torch':>6}")
    for r in result["ratios"]:
        ref = f"{r['reference']:10.1f}" if r["reference"] else f"{'-':>10}"
        ratio = f"{r['ratio']:6.2f}" if r["ratio"] else f"{'-':>6}"
        tt = f"{r['torch_tokens_per_real_token']:6.3f}" if r["torch_tokens_per_real_token"] else f"{'-':>6}"
        print(f"{r['name']:<34} {r['ours']:10.1f} {ref} {ratio} {r['tokens_per_real_token']:8.3f} {tt}")
    if "packing_auto" in result["ours"]:
        print(f"the tools' training batches here (--packing auto): {result['ours']['packing_auto']}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1].startswith("{"):
        child_main(measure, sys.argv[1:])
    else:
        main()
