"""BERT architectures: one frozen, hashable dataclass for teacher and students.

`BertArch` has per-layer tuples (attention heads and FFN size of each layer), so
a student may be heterogeneous. A layer's attention width is
`num_heads[i] * head_size`, at most `hidden_size`. The architecture is also the
core of an exported model's `config.json` (see `to_dict` / `to_hf_config`).

Cross-layer parameter sharing (ALBERT-style): `layer_groups[i]` is the
parameter group of layer i; the layers of a group run the same weights, so a
group is one set of parameters (`num_params` counts it once) while every layer
still costs its FLOPs. Groups are numbered 0, 1, ... in order of first use and
the layers of a group have equal heads and FFN sizes. None (the default) is no
sharing; a grouping with every layer in a group of its own is stored as None,
so equal models compare (and hash) equal.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import re
from pathlib import Path
from typing import Any

from tasks.errors import DataError, UserError
from tasks.userfiles import read_json

PRECISIONS = ("fp32", "bf16")
"""Compute precisions a model trains in (`LoopConfig.precision`; `distill.model.bert.COMPUTE_DTYPES`)."""

HEADS = ("classification", "regression", "tagging", "span", "none")
DEFAULT_TEACHER = "minilm"
"""The teacher every tool starts from by default: all-MiniLM-L6-v2 (6L-384), shipped by a PyPI package."""
LAYER_MAPS = ("uniform", "first", "last")
"""Named maps from student to teacher layers (`distill.kd.layers.teacher_layers`); else explicit indices."""


LIMITS = {"num_layers": 1024, "hidden_size": 1 << 16, "head_size": 1 << 16, "vocab_size": 1 << 22,
          "max_position_embeddings": 1 << 20, "type_vocab_size": 1 << 10}
"""Upper bounds of the integer fields: far beyond any BERT, low enough that a config.json with
`vocab_size: 1000000000` is refused before anything is allocated."""
MAX_LAYER_SIZE = 1 << 20
"""Upper bound of a layer's heads and FFN size."""
FLOATS = (("layer_norm_eps", 0.0, 1.0), ("hidden_dropout", 0.0, 1.0), ("attention_dropout", 0.0, 1.0),
          ("initializer_range", 0.0, 1e3))
"""(field, lowest, above the highest) of the float fields."""


class ArchError(UserError, ValueError):
    """An invalid architecture; the message names the field."""


@dataclasses.dataclass(frozen=True)
class BertArch:
    num_layers: int
    hidden_size: int
    head_size: int
    num_heads: tuple[int, ...]
    ffn_sizes: tuple[int, ...]
    vocab_size: int = 30522
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    initializer_range: float = 0.02
    pad_token_id: int = 0
    layer_groups: tuple[int, ...] | None = None

    def __post_init__(self):
        for field, most in LIMITS.items():  # types and bounds first: JSON may hold "two", true, 1e9 or -3
            object.__setattr__(self, field, _int(getattr(self, field), field, most))
        object.__setattr__(self, "pad_token_id", _int(self.pad_token_id, "pad_token_id", self.vocab_size - 1, 0))
        for field in ("num_heads", "ffn_sizes"):  # lists (from JSON) stored as tuples: the arch stays hashable
            values = getattr(self, field)
            _check(isinstance(values, (list, tuple)), field, f"expected one value per layer, got {values!r}")
            object.__setattr__(self, field, tuple(_int(v, field, MAX_LAYER_SIZE, layer=i) for i, v in enumerate(values)))
        for field, low, high in FLOATS:
            value = getattr(self, field)
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and low <= value < high
            _check(ok, field, f"must be a number in [{low}, {high}), got {value!r}")
        _check(
            self.hidden_size % self.head_size == 0,
            "head_size",
            f"head size {self.head_size} does not divide hidden size {self.hidden_size}",
        )
        for field in ("num_heads", "ffn_sizes"):
            values = getattr(self, field)
            _check(
                len(values) == self.num_layers,
                field,
                f"has {len(values)} entries for {self.num_layers} layers",
            )
        for i, heads in enumerate(self.num_heads):
            _check(
                heads * self.head_size <= self.hidden_size,
                "num_heads",
                f"layer {i}: {heads} heads x head size {self.head_size} = {heads * self.head_size}"
                f" exceeds hidden size {self.hidden_size}",
            )
        object.__setattr__(self, "layer_groups", _check_groups(self))

    # ------------------------------------------------------------------ build
    @classmethod
    def uniform(cls, num_layers: int, hidden_size: int, num_heads: int, ffn_size: int, **kw) -> BertArch:
        """A homogeneous architecture; head size is hidden / heads unless given."""
        num_layers = _int(num_layers, "num_layers", LIMITS["num_layers"])
        num_heads = _int(num_heads, "num_heads", MAX_LAYER_SIZE)
        hidden_size = _int(hidden_size, "hidden_size", LIMITS["hidden_size"])
        if hidden_size % num_heads:
            raise ArchError(f"num_heads: {num_heads} heads do not divide hidden size {hidden_size}")
        kw.setdefault("head_size", hidden_size // num_heads)
        return cls(
            num_layers=num_layers,
            hidden_size=hidden_size,
            num_heads=(num_heads,) * num_layers,
            ffn_sizes=(ffn_size,) * num_layers,
            **kw,
        )

    def replace(self, **changes) -> BertArch:
        return dataclasses.replace(self, **changes)

    @property
    def attention_widths(self) -> tuple[int, ...]:
        return tuple(h * self.head_size for h in self.num_heads)

    @property
    def is_uniform(self) -> bool:
        return len(set(self.num_heads)) == 1 and len(set(self.ffn_sizes)) == 1

    @property
    def groups(self) -> tuple[int, ...]:
        """The parameter group of each layer: `layer_groups`, or (0, 1, ..., L - 1) without sharing."""
        return self.layer_groups if self.layer_groups is not None else tuple(range(self.num_layers))

    @property
    def num_groups(self) -> int:
        """Sets of layer parameters (`encoder/layer_{g}` for g < num_groups)."""
        return len(set(self.groups))

    @property
    def group_starts(self) -> tuple[int, ...]:
        """The first layer of each group, in group order (its heads and FFN size are the group's)."""
        return tuple(self.groups.index(g) for g in range(self.num_groups))

    @property
    def name(self) -> str:
        """Short name: `4L-312` style plus the per-layer sizes when not default."""
        parts = [f"{self.num_layers}L", str(self.hidden_size)]
        heads = sorted(set(self.num_heads))
        ffns = sorted(set(self.ffn_sizes))
        parts.append("H" + ",".join(str(h) for h in self.num_heads) if len(heads) > 1 else f"H{heads[0]}")
        parts.append("F" + ",".join(str(f) for f in self.ffn_sizes) if len(ffns) > 1 else f"F{ffns[0]}")
        if self.head_size * self.num_heads[0] != self.hidden_size or len(heads) > 1:
            parts.append(f"D{self.head_size}")
        if self.layer_groups is not None:
            parts.append("G" + ",".join(str(g) for g in self.layer_groups))
        return "-".join(parts)

    # --------------------------------------------------------------- counting
    def num_params(self, head: str = "none", num_labels: int = 0, crf: bool = False) -> int:
        """Exact parameter count of `build_model(self, head, num_labels, crf=crf)` (shared layers count once)."""
        num_labels = head_outputs(head, num_labels)
        h = self.hidden_size
        n = (self.vocab_size + self.max_position_embeddings + self.type_vocab_size) * h + 2 * h
        for i in self.group_starts:
            width, ffn = self.attention_widths[i], self.ffn_sizes[i]
            n += 3 * (h * width + width)  # query, key, value
            n += width * h + h + 2 * h  # attention output + LayerNorm
            n += h * ffn + ffn + ffn * h + h + 2 * h  # FFN + LayerNorm
        if has_pooler(head):
            n += h * h + h
        if head in ("classification", "regression", "tagging", "span"):
            n += h * num_labels + num_labels
        if crf:  # a tagger's CRF: transitions between the tags, start and end scores
            n += num_labels * num_labels + 2 * num_labels
        return n

    def flops(self, seq_len: int, head: str = "none", num_labels: int = 0) -> int:
        """Forward FLOPs (2 per multiply-add) of one example of length `seq_len`."""
        num_labels = head_outputs(head, num_labels)
        h, t = self.hidden_size, seq_len
        total = 0
        for width, ffn in zip(self.attention_widths, self.ffn_sizes):
            total += 2 * t * h * 3 * width  # qkv projections
            total += 2 * 2 * t * t * width  # scores and weighted values
            total += 2 * t * width * h  # attention output
            total += 2 * 2 * t * h * ffn  # FFN
        if has_pooler(head):
            total += 2 * h * h
        if head in ("tagging", "span"):
            total += 2 * t * h * num_labels
        elif head in ("classification", "regression"):
            total += 2 * h * num_labels
        return total

    # ------------------------------------------------------------ (de)serialise
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields; `layer_groups` only when layers share parameters (so an unshared arch's dict,
        and every cache key made from it, is what it was before sharing existed)."""
        d = dataclasses.asdict(self)
        d["num_heads"] = list(self.num_heads)
        d["ffn_sizes"] = list(self.ffn_sizes)
        if self.layer_groups is None:
            del d["layer_groups"]
        else:
            d["layer_groups"] = list(self.layer_groups)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BertArch:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ArchError(f"unknown architecture fields {unknown}; valid: {sorted(names)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> BertArch:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any]) -> BertArch:
        """From a Hugging Face `BertConfig` dict (`config.json`)."""
        if "bertnas" in cfg:  # our own export: exact per-layer sizes
            return cls.from_dict(cfg["bertnas"]["arch"])
        model_type = cfg.get("model_type", "bert")
        if model_type != "bert":
            raise ArchError(f"model_type: only BERT checkpoints are supported, got {model_type!r}")
        act = cfg.get("hidden_act", "gelu")
        if act not in ("gelu", "gelu_python"):
            raise ArchError(f"hidden_act: only exact GELU is supported, got {act!r}")
        pos = cfg.get("position_embedding_type", "absolute")
        if pos != "absolute":
            raise ArchError(f"position_embedding_type: only 'absolute' is supported, got {pos!r}")
        layers, hidden, heads = cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"]
        return cls.uniform(
            layers,
            hidden,
            heads,
            cfg["intermediate_size"],
            vocab_size=cfg["vocab_size"],
            max_position_embeddings=cfg.get("max_position_embeddings", 512),
            type_vocab_size=cfg.get("type_vocab_size", 2),
            layer_norm_eps=cfg.get("layer_norm_eps", 1e-12),
            hidden_dropout=cfg.get("hidden_dropout_prob", 0.1),
            attention_dropout=cfg.get("attention_probs_dropout_prob", 0.1),
            initializer_range=cfg.get("initializer_range", 0.02),
            pad_token_id=cfg.get("pad_token_id", 0) or 0,
        )

    def hf_padded_sizes(self) -> tuple[int, int]:
        """(heads, intermediate size) of the uniform HF BERT that holds this arch.

        HF BERT needs head size = hidden / heads and one FFN size for all
        layers; smaller layers are padded with zero heads / zero neurons.
        """
        return self.hidden_size // self.head_size, max(self.ffn_sizes)

    def to_hf_config(self) -> dict[str, Any]:
        heads, ffn = self.hf_padded_sizes()
        return {
            "model_type": "bert",
            "architectures": ["BertModel"],
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": heads,
            "intermediate_size": ffn,
            "hidden_act": "gelu",
            "hidden_dropout_prob": self.hidden_dropout,
            "attention_probs_dropout_prob": self.attention_dropout,
            "max_position_embeddings": self.max_position_embeddings,
            "type_vocab_size": self.type_vocab_size,
            "initializer_range": self.initializer_range,
            "layer_norm_eps": self.layer_norm_eps,
            "pad_token_id": self.pad_token_id,
            "position_embedding_type": "absolute",
        }


def head_outputs(head: str, num_labels: int) -> int:
    """Outputs of a task head, as `build_model` makes it: regression has 1, span 2 (start, end)."""
    return {"regression": 1, "span": 2}.get(head, num_labels)


def has_pooler(head: str) -> bool:
    """Sentence-level heads read the pooled [CLS] vector; token heads do not."""
    return head in ("classification", "regression", "none")


_NAME = re.compile(r"^(\d+)L-(\d+)((?:-[HFDG]\d+(?:,\d+)*)*)$")
MAX_LAYERS, MAX_WIDTH = 1024, 1 << 20
"""Bounds on a name's numbers: beyond them a name is a typo, not a model (and would exhaust memory)."""


def parse_arch_name(name: str, base: BertArch | None = None) -> BertArch:
    """`4L-312`, `6L-384-H6-F1536`, `4L-312-H12-F1200`, `3L-384-H4,6,8-D32`, `4L-384-G0,0,1,1`.

    Defaults: 12 heads when they divide hidden with a head size >= 16 (as in
    BERT, TinyBERT 4L-312 and MiniLM 384), else hidden / 64, 8, 6, 4, 3, 2 or 1
    heads on the same terms; FFN = 4 x hidden; head size = hidden / heads; no
    sharing. `-G` gives each layer's parameter group (`BertArch.layer_groups`).
    Vocabulary and positions come from `base` (the teacher) when given.
    """
    m = _NAME.match(name.strip())
    if not m:
        raise ArchError(f"architecture name {name!r}: expected e.g. '4L-312' or '6L-384-H6-F1536'")
    layers, hidden = int(m.group(1)), int(m.group(2))
    opts = {}
    for part in filter(None, m.group(3).split("-")):
        if part[0] in opts:
            raise ArchError(f"architecture name {name!r}: -{part[0]} given twice")
        opts[part[0]] = tuple(int(v) for v in part[1:].split(","))
    _check_name_numbers(name, layers, hidden, opts)
    heads = opts.get("H") or (_default_heads(hidden),)
    ffn = opts.get("F") or (4 * hidden,)
    head_size = opts["D"][0] if "D" in opts else hidden // max(heads)
    expand = lambda v, field: v * layers if len(v) == 1 else v  # noqa: E731
    shared = {}
    if base is not None:
        shared = {
            k: getattr(base, k)
            for k in ("vocab_size", "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "pad_token_id")
        }
    return BertArch(
        num_layers=layers,
        hidden_size=hidden,
        head_size=head_size,
        num_heads=expand(heads, "H"),
        ffn_sizes=expand(ffn, "F"),
        layer_groups=opts.get("G"),
        **shared,
    )


def _check_name_numbers(name: str, layers: int, hidden: int, opts: dict[str, tuple[int, ...]]) -> None:
    """An ArchError naming the field of `name` that is out of range (before anything is built from it)."""
    fields = {"layers": ((layers,), MAX_LAYERS), "hidden size": ((hidden,), MAX_WIDTH),
              "-H (heads)": (opts.get("H", ()), MAX_WIDTH), "-F (FFN sizes)": (opts.get("F", ()), MAX_WIDTH),
              "-D (head size)": (opts.get("D", ()), MAX_WIDTH)}
    for field, (values, high) in fields.items():
        bad = [v for v in values if not 1 <= v <= high]
        if bad:
            raise ArchError(f"architecture name {name!r}: {field} {bad[0]} is out of range 1-{high}")
    if len(opts.get("D", ())) > 1:
        raise ArchError(f"architecture name {name!r}: -D takes one head size, got {len(opts['D'])}")


def _default_heads(hidden: int) -> int:
    for heads in (12, hidden // 64, 8, 6, 4, 3, 2, 1):
        if heads >= 1 and hidden % heads == 0 and hidden // heads >= 16:
            return heads
    return 1


def _check_groups(arch: BertArch) -> tuple[int, ...] | None:
    """`arch.layer_groups` validated and canonical: a tuple of ints, or None when no two layers share."""
    groups = arch.layer_groups
    if groups is None:
        return None
    _check(isinstance(groups, (list, tuple)), "layer_groups",
           f"expected one group index per layer, e.g. [0, 0, 1, 1], got {groups!r}")
    groups = tuple(groups)
    bad = [g for g in groups if isinstance(g, bool) or not isinstance(g, numbers.Integral) or g < 0]
    _check(not bad, "layer_groups", f"group indices must be integers >= 0, got {bad}")
    groups = tuple(int(g) for g in groups)
    _check(len(groups) == arch.num_layers, "layer_groups", f"has {len(groups)} entries for {arch.num_layers} layers")
    first: dict[int, int] = {}
    for i, g in enumerate(groups):
        _check(g <= len(first), "layer_groups",
               f"layer {i} uses group {g} before group {len(first)}; number the groups 0, 1, ... in order of "
               f"first use, e.g. [0, 0, 1, 1]")
        j = first.setdefault(g, i)
        for field, what in (("num_heads", "heads"), ("ffn_sizes", "FFN size")):
            a, b = getattr(arch, field)[j], getattr(arch, field)[i]
            _check(a == b, "layer_groups",
                   f"layers {j} and {i} share group {g} but have {what} {a} and {b}; shared layers need equal sizes")
    return groups if len(first) < len(groups) else None


def _int(value: Any, field: str, most: int, least: int = 1, layer: int | None = None) -> int:
    """`value` as an int, refused (naming `field`, and `layer`) unless an integer (not a bool) in [least, most]."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and least <= value <= most
    where = "" if layer is None else f"layer {layer}: "
    _check(ok, field, f"{where}must be an integer in [{least}, {most}], got {value!r}")
    return int(value)


def _check(ok: bool, field: str, problem: str) -> None:
    if not ok:
        raise ArchError(f"{field}: {problem}")


def resolve_student(spec: str, teacher: BertArch) -> BertArch:
    """A student architecture from a short name or a JSON file; vocabulary and positions follow the teacher."""
    path = Path(spec)
    if spec.endswith(".json") or path.is_file():
        if not path.is_file():
            raise UserError(f"{spec}: student architecture file not found")
        try:  # one line naming the file: bad UTF-8, syntax, nesting, not an object
            d = read_json(path, "a student architecture")
        except DataError as e:
            if e.line is None:
                raise
            problem = e.problem.removeprefix("malformed JSON: ")
            raise UserError(f"{path}: not valid JSON at line {e.line} ({problem})") from None
        try:
            if "bertnas" in d or "model_type" in d:
                return BertArch.from_hf_config(d)
            return BertArch.from_dict(d)
        except UserError as e:
            raise UserError(f"{path}: {e}") from None
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{path}: not a student architecture ({e!r} missing or invalid)") from None
    return parse_arch_name(spec, base=teacher)
