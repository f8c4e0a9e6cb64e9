"""The command-line tools of `distill`: one module per tool (`finetune`, `distill`, `evaluate`, `predict`,
`quantize`, `export`), each with `add_arguments(parser)`, the mapping of its flags to its one run config, and
`main(args)`; `nas.cli` gathers them (and `search`) under the `bertnas` command.

This file holds their shared plumbing: logging, errors and exit codes (and `host`: the CPU a run records, and the
host allocator's settings that the `bertnas` command and the search's CPU workers start with). A `UserError` (bad file, flag,
directory or name) prints one line, `error: <message>`, and exits with status 2; an interrupted run
exits with 130. Anything else is a bug: one line naming the log file that holds its traceback, exit 70.

May import `distill.run`, only inside a tool's `main` or config mapping: `--help` and flag errors
answer without loading JAX.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

from distill.arch import PRECISIONS
from distill.cli import host
from distill.export.scheme import SCHEMES
from distill.files import cache_root
from tasks.errors import UserError
from tasks.packing import packing_setting
from tasks.userdata import DataSpec


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("jax._src", "absl", "httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not verbose:  # Orbax's writer threads log each failure with its traceback; ours says it in one line
        logging.getLogger("absl").addFilter(_without_traceback)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _without_traceback(record: logging.LogRecord) -> bool:
    record.exc_info, record.exc_text, record.stack_info = None, None, None
    return True


BUG_EXIT = 70
"""The exit status of an unexpected exception (a bug of ours: EX_SOFTWARE), distinct from bad input's 2."""


def run(main: Callable[[], int | None]) -> None:
    """Call `main()`: user errors become a one-line message and exit 2, Ctrl+C exit 130, and anything else
    (a bug) one line naming a log file that holds its traceback, exit 70."""
    try:
        code = main()
    except UserError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]  # one line, always
        print(f"error: {'; '.join(lines) or type(e).__name__}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as e:
        if e.errno not in ENVIRONMENT_ERRORS:
            _bug(e)
        hint = "; free some space and run again (with --resume where the tool has it)" if e.errno in (
            errno.ENOSPC, errno.EDQUOT) else ""
        print(f"error: {e.filename or type(e).__name__}: {e.strerror or e}{hint}", file=sys.stderr)
        sys.exit(2)
    except MemoryError:
        print("error: out of host memory; lower --batch-size (or the data size)", file=sys.stderr)
        sys.exit(2)
    except Exception as e:  # noqa: BLE001 - the catch-all: a bug must not look like a crash of the user's data
        if "RESOURCE_EXHAUSTED" in str(e):  # XLA's out-of-memory on the device (jax is not imported here)
            print(f"error: out of device memory ({' '.join(str(e).split())[:160]}); lower --batch-size",
                  file=sys.stderr)
            sys.exit(2)
        _bug(e)
    sys.exit(code or 0)


ENVIRONMENT_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENAMETOOLONG)
"""OS errors that are the machine's or the path's, not ours: a full disk, no permission, a read-only file
system, a name too long for the file system."""


def _bug(e: Exception) -> None:
    """Exit 70 with one line that names the log file holding the traceback of `e` (the current exception)."""
    log_file = crash_log(traceback.format_exc())
    what = " ".join(f"{type(e).__name__}: {e}".split())[:200]
    print(f"error: internal error ({what}); this is a bug in bertnas, not a problem with your files; "
          f"the traceback is in {log_file}", file=sys.stderr)
    sys.exit(BUG_EXIT)


def crash_log(text: str) -> Path:
    """Write a traceback to a new file under `cache_root()/crashes` (else the temporary directory); its path."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for root in (cache_root() / "crashes", Path(tempfile.gettempdir())):
        try:
            root.mkdir(parents=True, exist_ok=True)
            fd, path = tempfile.mkstemp(dir=root, prefix=f"bertnas-{stamp}-{os.getpid()}-", suffix=".log")
            with os.fdopen(fd, "w") as fh:
                fh.write(f"bertnas {' '.join(sys.argv[1:])}\n\n{text}")
            return Path(path)
        except OSError:
            continue
    return Path("(no writable place for the log)")


class Parser(argparse.ArgumentParser):
    """argparse with the tools' error format: a bad flag is a UserError (one line `error: ...`, exit 2),
    not the usage text followed by argparse's message."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message} (see {self.prog} --help)")

    def parse_known_args(self, args=None, namespace=None):
        ns, rest = super().parse_known_args(args, namespace)
        for a in self._actions:  # `--flag=--` leaves [] (argparse drops the '--' and never calls the type)
            if a.option_strings and a.nargs is None and a.default != [] and getattr(ns, a.dest, None) == []:
                self.error(f"argument {a.option_strings[-1]}: expected one value")
        return ns, rest


def number(*, low: float | None = None, high: float | None = None, above: float | None = None,
           below: float | None = None) -> Callable[[str], float]:
    """An argparse type: a finite float, >= `low`, <= `high`, > `above`, < `below` (those given)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        bounds = [(low, value >= (low or 0), ">="), (high, value <= (high or 0), "<="),
                  (above, value > (above or 0), ">"), (below, value < (below or 0), "<")]
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        for bound, ok, op in bounds:
            if bound is not None and not ok:
                raise argparse.ArgumentTypeError(f"must be {op} {bound:g}, got {text}")
        return value

    return parse


def at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= `low` (argparse reports anything else as a bad flag value, exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def add_run_args(p, *, lr: float, epochs: int) -> None:
    """Flags shared by the training tools: data, run directory, loop and optimizer."""
    p.add_argument("--task", default="sst2", help="task name (sst2, stsb, conll2003, squad, mrpc, ..., or the "
                   "generic text-classification, text-pair-classification, text-regression, token-classification)")
    p.add_argument("--data-dir", default=None, help="folder with the task's files (default $GLUE_DIR/<TASK>)")
    add_data_args(p)
    p.add_argument("--output", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    p.add_argument("--epochs", type=at_least(0), default=epochs)
    p.add_argument("--max-steps", type=at_least(0), default=0, help="stop after N steps (0: all epochs)")
    p.add_argument("--batch-size", type=at_least(1), default=32)
    p.add_argument("--lr", type=number(above=0), default=lr, help="peak learning rate")
    p.add_argument("--weight-decay", type=number(low=0), default=0.01)
    p.add_argument("--warmup-ratio", type=number(low=0, below=1), default=0.1)
    p.add_argument("--schedule", default="linear", choices=["linear", "cosine", "constant"])
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "lamb"])
    p.add_argument("--max-grad-norm", type=number(low=0), default=1.0)
    p.add_argument("--layer-lr-decay", type=number(above=0, high=1), default=1.0, help="layer-wise LR decay factor (1: off)")
    p.add_argument("--freeze-embeddings", action="store_true")
    p.add_argument("--ema", type=number(low=0, below=1), default=0.0, metavar="DECAY",
                   help="evaluate and export a moving average of the weights with this decay (0.999: about the "
                   "last 1,000 steps; 0: the weights themselves)")
    p.add_argument("--eval-every", type=at_least(0), default=0, help="also evaluate every N steps")
    p.add_argument("--patience", type=at_least(0), default=0, help="early stopping after N evaluations without gain")
    p.add_argument("--train-limit", type=at_least(1), default=None, help="first N training examples only")
    p.add_argument("--dev-limit", type=at_least(1), default=None)
    p.add_argument("--seed", type=at_least(0), default=0)
    p.add_argument("--no-cache", action="store_true", help="recompute instead of reusing cached results")
    p.add_argument("--checkpoint-every", type=at_least(1), default=500, help="save a resumable checkpoint every N steps")
    p.add_argument("--profile", type=at_least(0), default=0, metavar="N",
                   help="write a JAX profiler trace of N steps (from step 5) to OUTPUT/profile")
    add_precision_arg(p)
    add_devices_args(p)
    p.add_argument("-v", "--verbose", action="store_true")


def add_data_args(p) -> None:
    """The data flags of every tool (`tasks.userdata.DataSpec`, after `data_from_args`): the generic tasks'
    files or dataset and columns, and any task's sequence length."""
    g = p.add_argument_group("your own data (the generic tasks)")
    g.add_argument("--train-file", default=None, metavar="FILE", help="training data: .csv, .tsv or .jsonl (JSON "
                   "lines); the label set is read from it")
    g.add_argument("--dev-file", default=None, metavar="FILE", help="evaluation data, same layout")
    g.add_argument("--test-file", default=None, metavar="FILE", help="test data (labels optional)")
    g.add_argument("--dataset", default=None, metavar="PATH|NAME[:CONFIG]",
                   help="a Hugging Face dataset: a folder written by save_to_disk, or a name in the local datasets "
                   "cache (splits train, validation, test)")
    g.add_argument("--text-column", default=None, help="text column (default text; token-classification: the "
                   "words, default tokens)")
    g.add_argument("--text-pair-column", default=None, help="second text of sentence pairs (default text_pair for "
                   "text-pair-classification)")
    g.add_argument("--label-column", default=None, help="label or score column (default label; "
                   "token-classification: the tags, default tags)")
    g.add_argument("--max-seq-length", type=at_least(8), default=None, metavar="N",
                   help="longest token sequence, special tokens included (default: the task's, 128; SQuAD 384; "
                   "evaluate and predict: the model's)")


def data_from_args(args):
    """The run's `DataSpec`, from the data flags (`add_data_args`)."""
    return DataSpec(
        train_file=args.train_file, dev_file=args.dev_file, test_file=args.test_file, dataset=args.dataset,
        text_column=args.text_column, text_pair_column=args.text_pair_column, label_column=args.label_column,
        max_seq_length=args.max_seq_length,
    )


def add_precision_arg(p) -> None:
    """`--precision` of the training tools and the search (`LoopConfig.precision`, after `precision`)."""
    p.add_argument("--precision", default="auto", choices=["auto", *PRECISIONS],
                   help="compute of training and teacher labelling: bf16 runs the matmuls on bfloat16 operands "
                   "with float32 accumulation and float32 master weights; auto (default): bf16 on GPUs, TPUs "
                   "and CPUs with AMX or AVX512-BF16, fp32 elsewhere. Evaluation and exports stay float32")


def add_devices_args(p) -> None:
    """`--devices`, `--fsdp`, `--grad-accum` and `--attention-dropout` of the training tools (`LoopConfig`)."""
    p.add_argument("--devices", type=at_least(0), default=0, metavar="N",
                   help="split each training batch over the first N local devices (default 0: all); --batch-size "
                   "must be a multiple of N (times --grad-accum). Evaluation and labelling use every device")
    p.add_argument("--fsdp", action="store_true",
                   help="split the parameters and optimizer state over the devices too, not only the batch (less "
                   "memory per device in the train step; the state is still built on one device first)")
    p.add_argument("--grad-accum", type=at_least(1), default=1, metavar="N",
                   help="compute each step's gradient over N micro-batches in turn (memory of a batch N times "
                   "smaller, the update of the whole batch); --batch-size must be a multiple of N")
    add_attention_dropout_arg(p)
    add_packing_arg(p)


def add_packing_arg(p) -> None:
    """`--packing` of the training tools and the search (`LoopConfig.packing`, after `packing`)."""
    p.add_argument("--packing", default="auto", choices=["auto", "on", "off"],
                   help="pack several sentences into each row of a training batch (sentence-level tasks; about "
                   "--batch-size sentences per step on average, far less padding, one compiled shape); auto "
                   "(default): where JAX runs on one CPU device without --grad-accum, and only where packing "
                   "saves compute over length buckets (short sentences such as SST-2's; not STS-B's pairs); on: "
                   "wherever the task allows; with --resume, what the run started with")


def packing(name: str, resume: str | None = None, *, grad_accum: int = 1, processes: int = 1) -> str:
    """`--packing`'s value for the run config ('on', 'off' or 'auto': `LoopConfig.packing`): `auto` is what
    the run in `resume` (a run directory being resumed) trained with (off, for runs from before the flag),
    else 'auto' where JAX runs on one CPU device in one process and no `--grad-accum` splits batches (on GPUs
    bucketed rows keep cuDNN's fused attention, which takes no packed rows), 'off' elsewhere."""
    if name != "auto":
        return name
    if resume is not None and (saved := _saved_loop(Path(resume))) is not None:
        return packing_setting(saved.get("packing", "off"))
    if processes > 1:  # rows split over processes: never packed (and no JAX backend started here for it)
        return "off"
    import jax  # here, not at the top: `--help` and flag errors answer without loading JAX

    one_cpu = jax.default_backend() == "cpu" and jax.local_device_count() == 1
    return "auto" if one_cpu and grad_accum == 1 else "off"


def add_workers_args(p) -> None:
    """`--workers N` and `--workers-on` of the training tools that run across processes (`nas.multihost`)."""
    p.add_argument("--workers", type=at_least(1), default=1, metavar="N",
                   help="run as N processes, Ray Train JaxTrainer workers (one per host; on one machine, CPU "
                   "processes), each feeding its rows of every batch; rank 0 writes OUTPUT (no cache)")
    p.add_argument("--workers-on", default="cpu", choices=("cpu", "gpu", "tpu"),
                   help="the workers' devices with --workers (default cpu)")


def check_workers_here(args, tool: str) -> None:
    """A tool's own `main` runs in this process: `--workers N` goes through `bertnas TOOL` (`nas.cli`, which
    starts the workers)."""
    if getattr(args, "workers", 1) > 1:
        raise UserError(f"--workers: run it through `bertnas {tool}` (scripts call it so)")


def add_attention_dropout_arg(p) -> None:
    """`--attention-dropout` of the training tools and the search, after `attention_dropout`."""
    p.add_argument("--attention-dropout", default="auto", choices=["auto", "on", "off"],
                   help="dropout on the attention probabilities while training; auto (default): on on CPUs, off on "
                   "GPUs and TPUs, where fused attention kernels take none (on NVIDIA GPUs in bf16 it lets cuDNN's "
                   "flash attention run); with --resume, what the run started with")


def attention_dropout(name: str, resume: str | None = None) -> bool:
    """`--attention-dropout`'s value for the run config: `auto` is what the run in `resume` (a run directory
    being resumed) trained with (on, for runs from before the flag), else on only where JAX runs on the CPU."""
    if name != "auto":
        return name == "on"
    if resume is not None and (saved := _saved_loop(Path(resume))) is not None:
        return bool(saved.get("attention_dropout", True))
    import jax  # here, not at the top: `--help` and flag errors answer without loading JAX

    return jax.default_backend() == "cpu"


def precision(name: str, resume: str | None = None) -> str:
    """`--precision`'s value for the run config: `auto` becomes what the run in `resume` (a run directory
    being resumed) trained in (fp32 for runs from before the flag), else bf16 on a TPU, on a GPU with
    bfloat16 tensor cores (compute capability 8.0 and up) and on a CPU with `BF16_CPU_FLAGS` (Intel AMX:
    bfloat16 matmuls at about 5x float32's speed in XLA; AMD Zen 4's AVX512-BF16: SST-2 fine-tuning 1.1x,
    teacher labelling 1.8x), and fp32 elsewhere."""
    if name != "auto":
        return name
    if resume is not None and (saved := _saved_loop(Path(resume))) is not None:
        return str(saved.get("precision", "fp32"))
    import jax  # here, not at the top: `--help` and flag errors answer without loading JAX

    device = jax.devices()[0]
    if device.platform == "gpu":
        capability = getattr(device, "compute_capability", None)
        return "bf16" if capability is None or float(capability) >= 8.0 else "fp32"
    if device.platform != "cpu":
        return "bf16"
    return "bf16" if cpu_flags() & BF16_CPU_FLAGS else "fp32"


def _saved_loop(run: Path) -> dict | None:
    """The loop settings a run's config.json records (None: no readable config)."""
    try:
        saved = json.loads((run / "config.json").read_text())
    except (OSError, ValueError):
        return None
    loops = [v["loop"] for v in saved.values() if isinstance(v, dict) and isinstance(v.get("loop"), dict)] \
        if isinstance(saved, dict) else []
    return loops[0] if loops else None


BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
"""CPU flags under which `--precision auto` picks bf16: AMX (Intel Sapphire Rapids and later) or AVX512-BF16
(AMD Zen 4 and later, Intel Cooper Lake): XLA's bfloat16 matmuls with float32 results beat float32 there."""


def cpu_flags() -> set[str]:
    """The CPU's feature flags (`host.cpu_flags`; empty off Linux)."""
    return host.cpu_flags()


def add_quantize_arg(p) -> None:
    """`--quantize NAME` of the training tools: also an int8 copy of what they export, measured against float32."""
    p.add_argument("--quantize", default=None, choices=list(SCHEMES),
                   help="also quantize the exported model(s) (int8 weights per output channel, activations "
                   "per token) and report accuracy, size and latency next to float32")


def add_compare_args(p) -> None:
    """`--evaluate` and the data flags of the tools that write a model from another (`quantize`, `export`):
    both models scored on `--split` of their task (`compare_from_args`)."""
    p.add_argument("--evaluate", action="store_true",
                   help="evaluate both models on --split of their task (metrics, drop, agreement)")
    p.add_argument("--task", default=None, help="task name (default: the one recorded in the model)")
    p.add_argument("--data-dir", default=None, help="folder with the task's files (default $GLUE_DIR/<TASK>)")
    add_data_args(p)
    p.add_argument("--split", default="dev")
    p.add_argument("--limit", type=at_least(1), default=None, help="first N examples only")
    p.add_argument("--batch-size", type=at_least(1), default=128)


def compare_from_args(args) -> dict:
    """`--evaluate`: `distill.run.compare` of `--model` against `--output` as the flags say."""
    from distill.run import compare

    return compare(args.model, args.output, args.task, data_dir=args.data_dir, split=args.split, limit=args.limit,
                   batch_size=args.batch_size, spec=data_from_args(args))


def add_hub_arg(p, what: str) -> None:
    """`--push-to-hub REPO` of the tools that write an export (`distill.export.card.push_to_hub`)."""
    p.add_argument("--push-to-hub", metavar="REPO", default=None,
                   help=f"upload {what} to the Hugging Face Hub model repository REPO (user/name; created "
                   "private when new, an existing one keeps its visibility); needs a token (hf auth login or "
                   "HF_TOKEN). Checked before any work; a failed upload keeps the local export")


def check_hub_arg(args) -> None:
    """`--push-to-hub`'s offline, token and name checks, before a tool does any work."""
    if getattr(args, "push_to_hub", None):
        from distill.export.card import check_hub

        check_hub(args.push_to_hub)


def finish_export(args, folder, run: dict | None = None) -> dict:
    """The card of the export `folder` with this command line (and what `run` measured), then, with
    `--push-to-hub`, its upload; returns {"card": path, "hub": url or None}."""
    from distill.export.card import command_line, push_to_hub, write_card

    path = write_card(folder, run=run, command=command_line())
    url = push_to_hub(folder, args.push_to_hub) if getattr(args, "push_to_hub", None) else None
    return {"card": str(path), "hub": url}


def optimizer_from_args(args):
    from distill.run import OptimizerConfig

    return OptimizerConfig(
        name=args.optimizer,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio,
        schedule=args.schedule,
        max_grad_norm=args.max_grad_norm,
        layer_lr_decay=args.layer_lr_decay,
        freeze_embeddings=args.freeze_embeddings,
        ema=args.ema,
    )


def loop_from_args(args):
    from distill.run import LoopConfig

    return LoopConfig(
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        eval_every=args.eval_every,
        patience=args.patience,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        profile_steps=args.profile,
        devices=args.devices,
        grad_accum=args.grad_accum,
        fsdp=args.fsdp,
        attention_dropout=attention_dropout(args.attention_dropout,
                                            args.output if getattr(args, "resume", False) else None),
        precision=precision(args.precision, args.output if getattr(args, "resume", False) else None),
        packing=packing(args.packing, args.output if getattr(args, "resume", False) else None,
                        grad_accum=args.grad_accum, processes=getattr(args, "workers", 1)),
    )
