"""The architecture search space, as data (after HAT's `space0.yml`).

A `SearchSpace` holds one tuple of choices per dimension: the number of
layers, the hidden size, cross-layer parameter sharing, the attention heads and
FFN size of each layer, plus the distillation knobs (learning rate,
temperature, loss weights, layer map). `sample(trial, teacher)` is an Optuna
define-by-run function that only samples: first the layer count, the hidden
size and the sharing group size, then the heads and FFN size of each group of
layers (`heads_0`, `ffn_0`, ... for the sampled groups only, which are the
layers without sharing; one `heads` and one `ffn` when `heterogeneous` is
False), then the knobs. It returns a JSON-friendly dict that
`arch(sample, teacher)` turns into the student `BertArch` and `knobs(sample)`
into the distillation settings.

Sharing (`share`): group size choices; with size s, layer i uses parameter
group i // s (`BertArch.layer_groups`): 1 is no sharing, 2 pairs of adjacent
layers (ALBERT-style). The default spaces have (1,): no sharing.

Optuna naming. Optuna rejects a parameter name whose choice list changes
between trials, and a layer may only take heads with heads * head_size <=
hidden. So the heads of a layer are drawn from the choices that fit the
sampled hidden size, under a name that is unique to that filtered list: the
plain name (`heads_0`) when every choice fits, else the name plus the largest
fitting choice (`heads_0@max4`). The filtered list is exactly the choices
<= hidden / head_size, so its largest member identifies it, and hidden sizes
with the same list share one parameter (TPE learns across them). A dimension
with a single choice is constant: it is not suggested, only returned.

Checks that need no teacher run on construction (`SpaceError` naming the
field); `validate(teacher)` checks the space against the teacher.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import yaml

from distill.arch import LAYER_MAPS, BertArch
from distill.run import SubnetChoices
from tasks.errors import DataError, UserError
from tasks.userfiles import parse_json, read_text

INT_FIELDS = ("layers", "hidden", "heads", "ffn", "share")
FLOAT_FIELDS = ("learning_rate", "temperature", "hard_weight", "hidden_weight")
KNOBS = (*FLOAT_FIELDS, "init_layers")


class SpaceError(UserError, ValueError):
    """An invalid search space; the message names the field (and the file when read from one)."""


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    name: str = "custom"
    layers: tuple[int, ...] = (1, 2, 3, 4)  # choices for the number of layers
    hidden: tuple[int, ...] = (128, 192, 256, 320, 384)  # hidden size choices
    heads: tuple[int, ...] = (2, 4, 6, 8, 12)  # attention heads per layer (choices)
    ffn: tuple[int, ...] = (256, 512, 768, 1024, 1536)  # FFN size per layer (choices)
    head_size: int = 0  # 0: the teacher's head size
    heterogeneous: bool = True  # sample heads and FFN per layer; False: one value for all layers
    share: tuple[int, ...] = (1,)  # sharing group sizes: layer i uses parameters i // size (1: none, 2: pairs)
    learning_rate: tuple[float, ...] = (1e-4, 2e-4, 3e-4)
    temperature: tuple[float, ...] = (1.0,)
    hard_weight: tuple[float, ...] = (0.5,)
    hidden_weight: tuple[float, ...] = (0.0,)
    init_layers: tuple[str, ...] = ("uniform",)  # named layer maps (distill.arch.LAYER_MAPS)

    def __post_init__(self):
        for field in (*INT_FIELDS, *FLOAT_FIELDS, "init_layers"):
            values = _as_tuple(field, getattr(self, field))
            if field in INT_FIELDS:
                values = tuple(_int(field, v) for v in values)
            elif field in FLOAT_FIELDS:
                values = tuple(_float(field, v) for v in values)
            object.__setattr__(self, field, values)
            dup = sorted({v for v in values if values.count(v) > 1})
            _check(not dup, field, f"duplicate choices {dup}")
        _check(isinstance(self.name, str) and bool(self.name), "name", f"must be a non-empty string, got {self.name!r}")
        het = self.heterogeneous
        _check(isinstance(het, bool), "heterogeneous", f"must be true or false, got {het!r}")
        hs = self.head_size
        _check(not isinstance(hs, bool) and isinstance(hs, int) and hs >= 0, "head_size",
               f"must be an integer >= 0 (0: the teacher's), got {hs!r}")
        _check(max(self.share) <= max(self.layers), "share",
               f"group size {max(self.share)} exceeds the largest layer count {max(self.layers)}")
        _check(all(v > 0 for v in self.learning_rate), "learning_rate", f"must be > 0, got {self.learning_rate}")
        _check(all(v > 0 for v in self.temperature), "temperature", f"must be > 0, got {self.temperature}")
        for field in ("hard_weight", "hidden_weight"):
            _check(all(v >= 0 for v in getattr(self, field)), field, f"must be >= 0, got {getattr(self, field)}")
        bad = [v for v in self.init_layers if v not in LAYER_MAPS]
        _check(not bad, "init_layers", f"{bad} not valid; valid: {', '.join(LAYER_MAPS)}")

    # --------------------------------------------------------------- teacher
    def resolved_head_size(self, teacher: BertArch) -> int:
        return self.head_size or teacher.head_size

    def validate(self, teacher: BertArch) -> None:
        """Raise `SpaceError` naming the field where the space does not fit `teacher`."""
        hs = self.resolved_head_size(teacher)
        _check(hs <= teacher.head_size, "head_size", f"{hs} exceeds the teacher's head size {teacher.head_size}")
        for field, limit, what in (
            ("layers", teacher.num_layers, "{} layers"),
            ("hidden", teacher.hidden_size, "hidden size {}"),
            ("ffn", max(teacher.ffn_sizes), "largest FFN size {}"),
            ("heads", max(teacher.num_heads), "largest head count {}"),
        ):
            for v in getattr(self, field):
                _check(v <= limit, field, f"{v} exceeds the teacher's {what.format(limit)}")
        for h in self.hidden:
            _check(h % hs == 0, "hidden", f"{h} is not a multiple of the head size {hs}")
            _check(bool(self._fitting_heads(h, hs)), "heads",
                   f"no choice in {list(self.heads)} fits hidden {h} (at most {h // hs} heads of size {hs})")

    def subnet_choices(self, teacher: BertArch) -> SubnetChoices:
        """The space as a supernet sees it (`--strategy supernet`): `SpaceError` naming the field when a
        supernet shaped as `teacher` cannot represent it."""
        self.validate(teacher)
        _check(self.resolved_head_size(teacher) == teacher.head_size, "head_size",
               f"the supernet strategy keeps the teacher's head size {teacher.head_size}")
        _check(self.share == (1,), "share", "the supernet strategy cannot share layers; use share: [1]")
        _check(len(self.init_layers) == 1, "init_layers",
               f"the supernet strategy takes each layer count's layers by one map, got {list(self.init_layers)}")
        choices = SubnetChoices(layers=self.layers, hidden=self.hidden, heads=self.heads, ffn=self.ffn,
                                layer_map=self.init_layers[0])
        try:
            choices.check(teacher)
        except UserError as e:
            raise SpaceError(str(e)) from None
        return choices

    def size(self, teacher: BertArch) -> int:
        """The number of distinct student architectures in the space."""
        hs, n = self.resolved_head_size(teacher), 0
        for h in self.hidden:
            per_group = len(self._fitting_heads(h, hs)) * len(self.ffn)
            for layers in self.layers:
                groupings = {share_groups(layers, s) for s in self.share}  # sizes >= layers all share one group
                n += sum(per_group ** _num_groups(g, layers) if self.heterogeneous else per_group for g in groupings)
        return n

    def _fitting_heads(self, hidden: int, head_size: int) -> tuple[int, ...]:
        return tuple(h for h in self.heads if h * head_size <= hidden)

    # -------------------------------------------------------------- sampling
    def sample(self, trial: Any, teacher: BertArch) -> dict[str, Any]:
        """Optuna define-by-run: sample one student and its knobs (no computation)."""
        layers = int(_pick(trial, "layers", self.layers))
        hidden = int(_pick(trial, "hidden", self.hidden))
        share = int(_pick(trial, "share", self.share))
        fit = self._fitting_heads(hidden, self.resolved_head_size(teacher))
        _check(bool(fit), "heads", f"no choice fits hidden {hidden}; call validate(teacher) first")
        suffix = "" if len(fit) == len(self.heads) else f"@max{max(fit)}"
        groups = -(-layers // share)  # layers i // share share parameters: sizes are sampled per group
        names = [f"_{g}" for g in range(groups)] if self.heterogeneous else [""]
        heads = [int(_pick(trial, f"heads{n}{suffix}", fit)) for n in names]
        ffn = [int(_pick(trial, f"ffn{n}", self.ffn)) for n in names]
        unit = [i // share for i in range(layers)] if self.heterogeneous else [0] * layers
        heads, ffn = [heads[u] for u in unit], [ffn[u] for u in unit]
        out: dict[str, Any] = {"layers": layers, "hidden": hidden, "share": share, "heads": heads, "ffn": ffn}
        for field in FLOAT_FIELDS:
            out[field] = float(_pick(trial, field, getattr(self, field)))
        out["init_layers"] = str(_pick(trial, "init_layers", self.init_layers))
        return out

    def arch(self, sample: dict[str, Any], teacher: BertArch) -> BertArch:
        """The student of `sample`; vocabulary, positions and the rest come from the teacher.
        A sample without `share` (from a search before sharing existed) has none."""
        layers = int(sample["layers"])
        return teacher.replace(
            num_layers=layers,
            hidden_size=int(sample["hidden"]),
            head_size=self.resolved_head_size(teacher),
            num_heads=tuple(int(h) for h in sample["heads"]),
            ffn_sizes=tuple(int(f) for f in sample["ffn"]),
            layer_groups=share_groups(layers, int(sample.get("share", 1))),
        )

    def architecture_only(self) -> SearchSpace:
        """This space with each distillation knob fixed at its first choice: what the supernet strategy
        samples, since a candidate's supernet score does not depend on the knobs (they only set how its
        final run trains, and sampling them would score the same student again under other knobs)."""
        return dataclasses.replace(self, **{k: getattr(self, k)[:1] for k in KNOBS})

    @staticmethod
    def knobs(sample: dict[str, Any]) -> dict[str, Any]:
        """The distillation settings of `sample`: learning rate, temperature, weights, layer map."""
        return {k: sample[k] for k in KNOBS}

    # ------------------------------------------------------------- (de)serialise
    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Any, source: str = "search space") -> SearchSpace:
        if not isinstance(d, dict):
            raise SpaceError(f"{source}: expected a mapping of search space fields, got {type(d).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise SpaceError(f"{source}: unknown search space field(s) {unknown}; valid: {', '.join(names)}")
        try:
            return cls(**d)
        except SpaceError as e:
            raise SpaceError(f"{source}: {e}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> SearchSpace:
        """Read a `.json`, `.yaml` or `.yml` file; the name defaults to the file's stem."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".json", ".yaml", ".yml"):
            raise SpaceError(f"{path}: a search space file must end in .json, .yaml or .yml")
        try:
            text = read_text(path)
            d = parse_json(path, text) if suffix == ".json" else yaml.safe_load(text)
        except DataError as e:
            raise SpaceError(str(e)) from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            raise SpaceError(f"{where}: malformed YAML: {getattr(e, 'problem', None) or e}") from None
        except RecursionError:
            raise SpaceError(f"{path}: malformed YAML: nested too deeply") from None
        if isinstance(d, dict):
            d.setdefault("name", path.stem)
        return cls.from_dict(d, source=str(path))


def share_groups(layers: int, size: int) -> tuple[int, ...] | None:
    """`BertArch.layer_groups` for blocks of `size` adjacent layers (the last may be shorter); None when no
    two layers share (size 1, or a single layer), as `BertArch` stores it."""
    if size < 1:
        raise SpaceError(f"share: group size must be >= 1, got {size}")
    groups = tuple(i // size for i in range(layers))
    return groups if len(set(groups)) < layers else None


def _num_groups(groups: tuple[int, ...] | None, layers: int) -> int:
    return layers if groups is None else len(set(groups))


def _pick(trial: Any, name: str, choices: tuple) -> Any:
    """A single choice is a constant (not suggested); else a categorical suggestion."""
    return choices[0] if len(choices) == 1 else trial.suggest_categorical(name, list(choices))


def _as_tuple(field: str, value: Any) -> tuple:
    values = (value,) if isinstance(value, (str, int, float)) else value
    try:
        values = tuple(values)
    except TypeError:
        raise SpaceError(f"{field}: expected a list of choices, got {value!r}") from None
    _check(bool(values), field, "empty choice list")
    return values


def _int(field: str, v: Any) -> int:
    ok = not isinstance(v, bool) and isinstance(v, int) and v >= 1
    _check(ok, field, f"choices must be positive integers, got {v!r}")
    return int(v)


def _float(field: str, v: Any) -> float:
    # YAML 1.1 reads `1e-4` (no dot) as a string, so numeric strings are accepted.
    try:
        f = float(v) if not isinstance(v, bool) else math.nan
    except (TypeError, ValueError):
        f = math.nan
    _check(math.isfinite(f), field, f"choices must be finite numbers, got {v!r}")
    return f


def _check(ok: bool, field: str, problem: str) -> None:
    if not ok:
        raise SpaceError(f"{field}: {problem}")


_DEFAULT = SearchSpace(
    name="default",
    layers=(2, 3, 4),
    hidden=(128, 192, 256, 320, 384),
    heads=(2, 4, 6, 8, 12),
    ffn=(384, 512, 768, 1024, 1536),
    learning_rate=(1e-4, 2e-4, 3e-4),
    temperature=(1.0, 2.0),
)
PRESETS: dict[str, SearchSpace] = {
    # For a MiniLM-sized teacher: 6 layers, hidden 384, 12 heads of 32, FFN 1536.
    "default": _DEFAULT,
    # The same sizes, one heads / FFN value shared by all layers.
    "uniform": dataclasses.replace(_DEFAULT, name="uniform", heterogeneous=False),
    # `--smoke-test` with a MiniLM-sized teacher: small, fast candidates.
    "smoke": dataclasses.replace(
        _DEFAULT, name="smoke", layers=(1, 2), hidden=(64, 128), heads=(1, 2), ffn=(64, 128), learning_rate=(1e-3,)
    ),
    # The default sizes, and adjacent layers in pairs sharing their parameters or not.
    "shared": dataclasses.replace(_DEFAULT, name="shared", share=(1, 2)),
    # For tiny test teachers (2 layers, hidden 36, head size 12, FFN 37).
    "tiny": dataclasses.replace(
        _DEFAULT, name="tiny", layers=(1, 2), hidden=(24, 36), heads=(1, 2, 3), ffn=(16, 37), learning_rate=(1e-3,)
    ),
}


def get_space(spec: str | Path) -> SearchSpace:
    """A preset name (`default`, `uniform`, `shared`, `smoke`, `tiny`) or the path of a .json / .yaml file."""
    if str(spec) in PRESETS:
        return PRESETS[str(spec)]
    if Path(spec).suffix.lower() in (".json", ".yaml", ".yml") or Path(spec).exists():
        return SearchSpace.from_file(spec)
    presets = ", ".join(sorted(PRESETS))
    raise SpaceError(f"unknown search space {str(spec)!r}; presets: {presets}, or a .json/.yaml/.yml file")
