"""Model cards (README.md) for every export, and `--push-to-hub`.

`card_text(config, facts)` is a pure function: the card of an export from its config.json (task, labels,
teacher, arch and the dev metrics of the student and the teacher, which a quantized or ONNX export copies
from its float32 source) and `CardFacts` (sizes, whether transformers can load the weights, and what the
run measured: speedup, latency, the device, the command). `write_card(dir)` gathers those and writes
README.md beside the weights; the exporters call it (`export_model`, `export_quantized`, `export_onnx`)
and the tools call it again with the command and measurements they know. The card parses with
`huggingface_hub.ModelCard.load`: YAML metadata (pipeline tag, library, tags and, with dev metrics, a
model-index entry) and markdown.

`push_to_hub(dir, repo)` creates the Hub repository (private: an export may hold a model of private
data; an existing repository keeps its visibility) and uploads the directory. Offline
(`HF_HUB_OFFLINE=1`), without a token, or on any Hub error it raises a UserError naming `--push-to-hub`,
and the local export is left as it was; `check_hub` makes the offline and token checks before a run.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, HfApi, ModelCardData, get_token, is_offline_mode
from huggingface_hub.errors import HTTPError
from huggingface_hub.utils import validate_repo_id
from safetensors import safe_open

from distill.arch import BertArch
from distill.model.store import WEIGHTS, arch_from_config, read_config
from tasks.errors import UserError

CARD = "README.md"
PIPELINE_TAGS = {"classification": "text-classification", "regression": "text-classification",
                 "tagging": "token-classification", "span": "question-answering", "none": "feature-extraction"}
HF_CLASSES = {"classification": "AutoModelForSequenceClassification",
              "regression": "AutoModelForSequenceClassification",
              "tagging": "AutoModelForTokenClassification", "span": "AutoModelForQuestionAnswering",
              "none": "AutoModel"}


@dataclasses.dataclass(frozen=True)
class CardFacts:
    """What a card says beyond config.json: measured by the writer or the run."""

    weight_bytes: int = 0
    """Bytes of the weights file (model.safetensors, or model.onnx and its data)."""
    total_bytes: int = 0
    """Bytes of the whole directory (the card aside)."""
    transformers: bool = False
    """Whether transformers' PyTorch classes load the weights (a float32 export with every layer stored)."""
    speedup: float | None = None
    """Batch-1 latency of the teacher / of this model, measured on `device`."""
    latency_ms: float | None = None
    device: str | None = None
    command: str | None = None
    """The command line that produced the export."""

    def __post_init__(self):
        if self.weight_bytes < 0 or self.total_bytes < 0:
            raise ValueError(f"CardFacts: negative sizes ({self.weight_bytes}, {self.total_bytes})")
        if self.speedup is not None and not self.speedup > 0:
            raise ValueError(f"CardFacts: speedup must be > 0, got {self.speedup}")


def kind(cfg: dict[str, Any]) -> str:
    """'onnx', 'onnx-int8', 'int8' or 'float32': what the export directory holds."""
    meta = cfg.get("bertnas") or {}
    if isinstance(meta.get("onnx"), dict):
        return "onnx-int8" if meta["onnx"].get("quantization") else "onnx"
    return "int8" if "quantization" in meta or "quantization_config" in cfg else "float32"


def card_text(cfg: dict[str, Any], facts: CardFacts = CardFacts()) -> str:
    """The README.md of an export whose config.json is `cfg` (see the module doc)."""
    meta = cfg.get("bertnas") or {}
    arch = BertArch.from_dict(meta["arch"]) if "arch" in meta else BertArch.from_hf_config(cfg)
    head, num_labels = meta.get("head", "none"), int(meta.get("num_labels", 0))
    params = arch.num_params(head, num_labels, crf=bool(meta.get("crf")))
    title = f"{meta.get('task') or 'bertnas'} {arch.name} ({kind(cfg)})"
    body = "\n\n".join([f"# {title}", _summary(meta, arch, params, cfg, facts), _metrics(meta),
                        _speed(facts), _usage(cfg, head, facts), _provenance(meta, facts)])
    return f"---\n{_card_data(cfg, meta, head, title, facts).to_yaml()}\n---\n\n{body}\n"


def _card_data(cfg: dict, meta: dict, head: str, title: str, facts: CardFacts) -> ModelCardData:
    k = kind(cfg)
    tags = ["bertnas", "bert", "distillation", "jax", "flax", *([] if k == "float32" else [k])]
    if "int8" in k:
        tags.append("int8")
    metric, value = _headline(meta)
    results = None
    if metric is not None and head in PIPELINE_TAGS:
        results = [EvalResult(task_type=PIPELINE_TAGS[head], dataset_type=str(meta.get("task")),
                              dataset_name=str(meta.get("task")), dataset_split=meta.get("eval_split", "dev"),
                              metric_type=metric, metric_value=value)]
    library = "onnx" if k.startswith("onnx") else ("transformers" if facts.transformers else None)
    return ModelCardData(library_name=library, pipeline_tag=PIPELINE_TAGS.get(head), tags=sorted(set(tags)),
                         model_name=title, eval_results=results, metrics=[metric] if metric else None)


def _headline(meta: dict) -> tuple[str | None, float | None]:
    """(metric name, student value) of the task's main dev metric, when recorded."""
    dev = meta.get("dev") or {}
    teacher = meta.get("teacher_dev") or {}
    for name, value in dev.items():
        if name in teacher and _number(value):
            return name, float(value)
    return None, None


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _summary(meta: dict, arch: BertArch, params: int, cfg: dict, facts: CardFacts) -> str:
    labels = meta.get("labels") or []
    shown = ", ".join(f"`{x}`" for x in labels[:20]) + (f", ... ({len(labels)} in all)" if len(labels) > 20 else "")
    rows = [("Task", f"`{meta.get('task', 'unknown')}` ({meta.get('head', 'none')} head"
             + (", CRF" if meta.get("crf") else "") + ")"),
            ("Labels", shown or "none (a score or spans)"),
            ("Teacher", f"`{meta['teacher']}`" if meta.get("teacher") else "not recorded"),
            ("Architecture", f"`{arch.name}`: {arch.num_layers} layers, hidden {arch.hidden_size}, "
             f"heads {_per_layer(arch.num_heads)}, FFN {_per_layer(arch.ffn_sizes)}"
             + (f", shared layer groups {list(arch.layer_groups)}" if arch.layer_groups else "")),
            ("Parameters", f"{params:,}"),
            ("Format", _format(cfg)),
            ("Size", f"{facts.weight_bytes / 1e6:.2f} MB weights, {facts.total_bytes / 1e6:.2f} MB in all"),
            ("Max sequence length", str(meta.get("max_length", arch.max_position_embeddings)))]
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def _per_layer(values) -> str:
    values = list(values)
    return str(values[0]) if len(set(values)) == 1 else ",".join(map(str, values))


def _format(cfg: dict) -> str:
    meta = cfg.get("bertnas") or {}
    k = kind(cfg)
    if k == "float32":
        return "float32 safetensors, Hugging Face BERT layout"
    if k == "int8":
        q = meta.get("quantization") or {}
        return (f"int8 weights with float32 scales ({q.get('library', 'qwix')}; activations "
                f"{q.get('activations', 'dynamic')}, embeddings {q.get('embeddings', 'int8')})")
    onnx = meta["onnx"]
    return f"ONNX opset {onnx.get('opset')}" + (" with ONNX Runtime's dynamic int8" if k == "onnx-int8" else "")


def _metrics(meta: dict) -> str:
    dev, teacher = meta.get("dev") or {}, meta.get("teacher_dev") or {}
    names = [n for n in dev if _number(dev[n]) and n not in ("step", "epoch", "loss", "examples")]
    if not names:
        return "## Evaluation\n\nNo dev metrics were recorded with this export."
    split = meta.get("eval_split", "dev")
    lines = [f"## Evaluation\n\nOn the task's `{split}` split"
             + (f" (best step {dev['step']})" if "step" in dev else "") + ":\n",
             "| Metric | Student | Teacher |", "|---|---|---|"]
    for n in names:
        t = teacher.get(n)
        lines.append(f"| {n} | {dev[n]:.4f} | {f'{t:.4f}' if _number(t) else '-'} |")
    if kind({"bertnas": meta}) != "float32":
        lines.append("\nThese are the float32 model's scores, copied from the export this one was made from.")
    return "\n".join(lines)


def _speed(facts: CardFacts) -> str:
    if facts.speedup is None and facts.latency_ms is None:
        return "## Speed\n\nNot measured for this export."
    parts = []
    if facts.speedup is not None:
        parts.append(f"{facts.speedup:.2f}x faster than the teacher")
    if facts.latency_ms is not None:
        parts.append(f"{facts.latency_ms:.2f} ms per example at batch 1")
    return f"## Speed\n\n{', '.join(parts)}, measured on `{facts.device or 'an unrecorded device'}`."


def _usage(cfg: dict, head: str, facts: CardFacts) -> str:
    k = kind(cfg)
    flax = ("```python\nfrom distill.export.load import load_export\n\nmodel = load_export(\"PATH\")  "
            "# model.arch, model.params, model.tokenizer, model.model\n```\n\n"
            "or from the command line: `bertnas predict --model PATH` and `bertnas evaluate --model PATH`.")
    parts = ["## How to load\n\nPATH is this directory (after `huggingface_hub.snapshot_download(REPO)` "
             "when it comes from the Hub).\n\nWith bertnas (JAX/Flax):\n\n" + flax]
    if k == "float32" and facts.transformers:
        parts.append(f"With transformers (PyTorch):\n\n```python\nfrom transformers import AutoTokenizer, "
                     f"{HF_CLASSES.get(head, 'AutoModel')}\n\ntokenizer = AutoTokenizer.from_pretrained(\"PATH\")\n"
                     f"model = {HF_CLASSES.get(head, 'AutoModel')}.from_pretrained(\"PATH\")\n```"
                     + ("\n\ntransformers has no CRF: it gives the emission scores; decode with bertnas."
                        if (cfg.get("bertnas") or {}).get("crf") else ""))
    elif k == "float32":
        parts.append("transformers cannot load this directory: its shared layers are stored once per group. "
                     "Export with `--hf-layout` to write every layer for transformers.")
    elif k == "int8":
        parts.append("transformers and ONNX Runtime do not read this int8 format: load it with bertnas.")
    if k.startswith("onnx"):
        outputs = ", ".join((cfg["bertnas"]["onnx"].get("outputs") or ["logits"]))
        parts.append("With ONNX Runtime:\n\n```python\nimport onnxruntime as ort\nfrom transformers import "
                     "AutoTokenizer\n\ntokenizer = AutoTokenizer.from_pretrained(\"PATH\")\nsession = "
                     "ort.InferenceSession(\"PATH/model.onnx\")\ninputs = tokenizer([\"some text\"], "
                     "return_tensors=\"np\")\noutputs = session.run(None, {k: v.astype(\"int64\") for k, v in "
                     f"inputs.items()}})  # {outputs}\n```")
    return "\n\n".join(parts)


def _provenance(meta: dict, facts: CardFacts) -> str:
    lines = ["## How it was made", ""]
    if facts.command:
        lines += ["```bash", facts.command, "```", ""]
    source = (meta.get("quantization") or {}).get("source") or (meta.get("onnx") or {}).get("source")
    if source:
        lines.append(f"Converted from the float32 export `{source}`.")
    lines.append("Distilled from the teacher above with bertnas (JAX/Flax BERT distillation and architecture "
                 "search)." if meta.get("teacher") else "Written by bertnas.")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- write / push


def write_card(out_dir: str | os.PathLike, *, run: dict[str, Any] | None = None, command: str | None = None,
               transformers: bool | None = None) -> Path:
    """Write README.md into the export `out_dir` (the card only; nothing else is touched): `card_text` of
    its config.json with sizes measured here. `run`: what a run measured (`speedup`, `latency_ms`,
    `device`; other keys are ignored); `command`: the command line that made the export; `transformers`:
    whether transformers loads the weights (default: read from the weights file)."""
    out = Path(out_dir)
    cfg = read_config(out)
    measured = {k: v for k, v in (run or {}).items() if k in ("speedup", "latency_ms", "device") and v is not None}
    files = [f for f in out.rglob("*") if f.is_file() and f.name not in (CARD, f".{CARD}.tmp")]
    weights = [f for f in files if f.name in (WEIGHTS, "model.onnx", "model.onnx_data")]
    facts = CardFacts(weight_bytes=sum(f.stat().st_size for f in weights),
                      total_bytes=sum(f.stat().st_size for f in files),
                      transformers=_transformers_loads(out, cfg) if transformers is None else transformers,
                      command=command, **measured)
    tmp = out / f".{CARD}.tmp"
    tmp.write_text(card_text(cfg, facts))
    tmp.replace(out / CARD)
    return out / CARD


def _transformers_loads(out: Path, cfg: dict[str, Any]) -> bool:
    """Whether transformers' BERT classes load `out`: a float32 export storing every layer (a shared-layer
    student written without `hf_layout` stores each group once)."""
    if kind(cfg) != "float32" or not (out / WEIGHTS).is_file():
        return False
    arch = arch_from_config(cfg, out / "config.json")
    if arch.num_groups == arch.num_layers:
        return True
    last = f"encoder.layer.{arch.num_layers - 1}."
    with safe_open(str(out / WEIGHTS), framework="numpy") as f:
        return any(k.startswith(last) or f".{last}" in k for k in f.keys())


_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")
"""The user:password@ part of a URL (an `--optuna-storage` database, a Ray or storage URI)."""


def command_line() -> str:
    """This process's command line as `bertnas TOOL ...` (the card's "how it was made"), with any password in
    a URL argument (`postgresql://user:secret@host/db`) replaced by `***`: a card may be uploaded."""
    return shlex.join(["bertnas", *(_CREDENTIALS.sub(r"\1***@", a) for a in sys.argv[1:])])


def hub_problem() -> str | None:
    """Why nothing can be pushed to the Hub now (offline, no token), or None."""
    if is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "the Hugging Face Hub is offline here (HF_HUB_OFFLINE is set)"
    if not get_token():
        return "no Hugging Face token (run `hf auth login`, or set HF_TOKEN)"
    return None


def check_hub(repo: str) -> None:
    """`--push-to-hub REPO` before any work: a UserError when the repository name is invalid, the Hub is
    offline or there is no token."""
    try:
        validate_repo_id(repo)
    except ValueError as e:
        raise UserError(f"--push-to-hub {repo}: not a repository name ({e})") from None
    if (problem := hub_problem()) is not None:
        raise UserError(f"--push-to-hub {repo}: {problem}; the local export is kept")


def push_to_hub(folder: str | os.PathLike, repo: str, *, private: bool = True) -> str:
    """Create the model repository `repo` (private unless `private=False`; an existing one is kept as it
    is) and upload the export `folder` (or a folder of exports: a search's front) to it in one commit; its URL. A UserError naming `--push-to-hub` on
    any failure: the local export is never changed."""
    check_hub(repo)
    folder = Path(folder)
    if not (folder / "config.json").is_file() and not any(folder.glob("*/config.json")):
        raise UserError(f"--push-to-hub {repo}: {folder} holds no export (nor folders of exports) to push")
    api = HfApi()
    try:
        api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(repo_id=repo, folder_path=str(folder), repo_type="model",
                                 commit_message=f"bertnas export {folder.name}", ignore_patterns=[f".{CARD}.tmp"])
    except (OSError, ValueError, HTTPError) as e:
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise UserError(f"--push-to-hub {repo}: the upload failed ({reason}); the local export {folder} is "
                        "kept") from None
    url = getattr(info, "commit_url", None) or f"https://huggingface.co/{repo}"
    return str(url)
