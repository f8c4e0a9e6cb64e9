"""A weight-sharing supernet: one set of teacher-shaped weights from which every sub-network is sliced.

After DynaBERT (`run_glue.py`, `modeling_bert.py`: importance rewiring, then
width- and depth-adaptive distillation) and HAT (`linear_super.py`: a sub-layer
is `weight[:out, :in]` of the super layer):

  rewire    reorders each layer's heads and FFN neurons, and the hidden
            dimensions, by importance (`distill.kd.importance`). The network
            computes the same function (a permutation of units), but now the
            first k of each are its k most important, so a slice keeps them.
  Subnet    a sub-network: which supernet layer each of its layers runs, its
            hidden size, and the heads and FFN size of each layer.
  extract   the exact parameters of `subnet.arch(super_arch)`, an ordinary
            student, by basic slicing: the first heads, FFN neurons and hidden
            dims. Works on numpy and JAX arrays, and under `jax.grad`, so the
            gradient of a sub-network's loss flows into the supernet.
  masked    the parameters of the sub-network at its *shape* (layers and
            hidden size) with every supernet head and FFN neuron that fits,
            those beyond the sub-network's counts switched off by zeroing their
            output weights. Removing a head or neuron is exactly zeroing its
            output row, so the outputs equal `extract`'s; the masks are arrays,
            so one compilation per shape serves every width of that shape.
  SubnetChoices
            the space the supernet is trained on and searched over (choices
            of layers, hidden size, heads and FFN size, and the layer map that
            picks a sub-network's layers): `largest`, `smallest` and `sample`
            for the sandwich rule (BigNAS, once-for-all).

The supernet is uniform (equal heads and FFN size in every layer) and shares
no layers; the head size is the supernet's. No JAX is needed here beyond the
array slicing, which also works in numpy.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from flax import traverse_util

from distill.arch import LAYER_MAPS, ArchError, BertArch
from distill.kd.importance import Scores, layer_params
from distill.kd.init import hidden_role, map_hidden, shrink_layer, slice_hidden
from distill.kd.layers import teacher_layers


def check_supernet(arch: BertArch) -> None:
    """Raise `ArchError` unless `arch` can be a supernet: uniform layers, no sharing."""
    if not arch.is_uniform:
        raise ArchError(f"{arch.name}: a supernet needs equal heads and FFN sizes in every layer")
    if arch.layer_groups is not None:
        raise ArchError(f"{arch.name}: a supernet cannot share layers (layer_groups {arch.layer_groups})")


def ranking(scores) -> np.ndarray:
    """Indices in decreasing order of `scores` (earlier index first on ties): the rewiring's order."""
    return np.argsort(-np.asarray(scores, np.float64), kind="stable")


def rewire(params: dict, arch: BertArch, scores: Scores) -> dict:
    """`params` with each layer's heads and FFN neurons, and the hidden dims, in decreasing order of `scores`
    (`ranking`; supernet hidden dim i is teacher dim `ranking(scores["hidden"])[i]`).

    The model computes the same outputs (up to float rounding). Returns float32 numpy arrays.
    """
    check_supernet(arch)
    tree = {k: v for k, v in params.items() if k != "encoder"}
    tree["encoder"] = {
        f"layer_{i}": shrink_layer(
            layer_params(params, arch, i), ranking(scores["heads"][i]), ranking(scores["ffn"][i]), arch.head_size
        )
        for i in range(arch.num_layers)
    }
    keep = ranking(scores["hidden"])
    tree = map_hidden(tree, lambda x, role: slice_hidden(np.asarray(x), role, keep))
    return traverse_util.unflatten_dict(
        {path: np.asarray(x, np.float32) for path, x in traverse_util.flatten_dict(tree).items()}
    )


@dataclasses.dataclass(frozen=True)
class Subnet:
    """A sub-network of a supernet: its layer j runs supernet layer `layers[j]` with `num_heads[j]` heads
    and `ffn_sizes[j]` FFN neurons; every layer has the first `hidden_size` hidden dims."""

    layers: tuple[int, ...]
    hidden_size: int
    num_heads: tuple[int, ...]
    ffn_sizes: tuple[int, ...]

    def __post_init__(self):
        for field in ("layers", "num_heads", "ffn_sizes"):
            object.__setattr__(self, field, tuple(int(v) for v in getattr(self, field)))
            if len(getattr(self, field)) != len(self.layers):
                raise ArchError(f"{field}: {len(getattr(self, field))} entries for {len(self.layers)} layers")
        if not self.layers:
            raise ArchError("layers: a sub-network needs at least one layer")

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def shape(self) -> tuple[tuple[int, ...], int]:
        """What fixes the compiled shapes of `masked`: the layers and the hidden size."""
        return self.layers, self.hidden_size

    def arch(self, supernet: BertArch) -> BertArch:
        """The ordinary student architecture this sub-network is (checked against the supernet)."""
        check_subnet(self, supernet)
        return supernet.replace(
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            num_heads=self.num_heads,
            ffn_sizes=self.ffn_sizes,
            layer_groups=None,
        )


def check_subnet(sub: Subnet, supernet: BertArch) -> None:
    """Raise `ArchError` naming the field when `sub` is not a slice of `supernet`."""
    check_supernet(supernet)
    if sub.hidden_size > supernet.hidden_size:
        raise ArchError(f"hidden_size: {sub.hidden_size} exceeds the supernet's {supernet.hidden_size}")
    bad = [i for i in sub.layers if not 0 <= i < supernet.num_layers]
    if bad:
        raise ArchError(f"layers: {bad} are not layers of the {supernet.num_layers}-layer supernet")
    if list(sub.layers) != sorted(set(sub.layers)):
        raise ArchError(f"layers: {sub.layers} must be increasing supernet layers, each used once")
    if max(sub.num_heads) > supernet.num_heads[0]:
        raise ArchError(f"num_heads: {max(sub.num_heads)} exceeds the supernet's {supernet.num_heads[0]}")
    if max(sub.ffn_sizes) > supernet.ffn_sizes[0]:
        raise ArchError(f"ffn_sizes: {max(sub.ffn_sizes)} exceeds the supernet's {supernet.ffn_sizes[0]}")


def _slice_layer(layer: dict, heads: int, ffn: int) -> dict:
    attention = layer["attention"]
    return {
        "attention": {
            "qkv": {"kernel": attention["qkv"]["kernel"][:, :, :heads], "bias": attention["qkv"]["bias"][:, :heads]},
            "output": {"kernel": attention["output"]["kernel"][:heads], "bias": attention["output"]["bias"]},
        },
        "attention_norm": layer["attention_norm"],
        "intermediate": {
            "kernel": layer["intermediate"]["kernel"][:, :ffn], "bias": layer["intermediate"]["bias"][:ffn],
        },
        "output": {"kernel": layer["output"]["kernel"][:ffn], "bias": layer["output"]["bias"]},
        "output_norm": layer["output_norm"],
    }


def _first_hidden(x: Any, role: str, h: int) -> Any:
    if role in ("in", "in_out"):
        x = x[:h]
    if role in ("out", "in_out", "norm"):
        x = x[..., :h]
    return x


def extract(params: dict, supernet: BertArch, sub: Subnet) -> dict:
    """The parameters of `build_model(sub.arch(supernet), ...)`: slices of the supernet's (no copies under jit)."""
    check_subnet(sub, supernet)
    tree = {k: v for k, v in params.items() if k != "encoder"}
    tree["encoder"] = {
        f"layer_{j}": _slice_layer(params["encoder"][f"layer_{i}"], sub.num_heads[j], sub.ffn_sizes[j])
        for j, i in enumerate(sub.layers)
    }
    flat = traverse_util.flatten_dict(tree)
    return traverse_util.unflatten_dict(
        {path: _first_hidden(x, hidden_role(path), sub.hidden_size) for path, x in flat.items()}
    )


def check_student(student: BertArch, supernet: BertArch, layers: tuple[int, ...]) -> None:
    """Raise `ArchError` naming the field when `student` is no slice of the supernet layers `layers`."""
    for field in ("head_size", "vocab_size", "type_vocab_size", "max_position_embeddings"):
        if getattr(student, field) != getattr(supernet, field):
            raise ArchError(f"{field}: the student has {getattr(student, field)}, the supernet "
                            f"{getattr(supernet, field)}; a student taken from a supernet needs equal")
    if student.layer_groups is not None:
        raise ArchError(f"layer_groups: a student taken from a supernet cannot share layers ({student.layer_groups})")
    Subnet(layers, student.hidden_size, student.num_heads, student.ffn_sizes).arch(supernet)


def student_from_supernet(student: BertArch, supernet: BertArch, params: dict, layers: tuple[int, ...]) -> dict:
    """The parameters of `student` taken from a supernet: the first heads, FFN neurons and hidden dims of the
    supernet layers `layers` (`extract`); `ArchError` naming the field when it is no slice of the supernet."""
    check_student(student, supernet, layers)
    return extract(params, supernet, Subnet(layers, student.hidden_size, student.num_heads, student.ffn_sizes))


def padded(supernet: BertArch, shape: tuple[tuple[int, ...], int]) -> Subnet:
    """The widest sub-network of a shape: every supernet head that fits its hidden size, every FFN neuron."""
    layers, hidden = shape
    heads = min(supernet.num_heads[0], hidden // supernet.head_size)
    return Subnet(layers, hidden, (heads,) * len(layers), (supernet.ffn_sizes[0],) * len(layers))


def width_masks(sub: Subnet, supernet: BertArch) -> tuple[np.ndarray, np.ndarray]:
    """(heads (L, N), ffn (L, F)) float32 masks of `sub` within `padded(supernet, sub.shape)`."""
    wide = padded(supernet, sub.shape)
    check_subnet(sub, supernet)
    heads = (np.arange(wide.num_heads[0])[None, :] < np.asarray(sub.num_heads)[:, None]).astype(np.float32)
    ffn = (np.arange(wide.ffn_sizes[0])[None, :] < np.asarray(sub.ffn_sizes)[:, None]).astype(np.float32)
    return heads, ffn


def masked(params: dict, supernet: BertArch, shape: tuple[tuple[int, ...], int], head_mask, ffn_mask) -> dict:
    """Parameters of `padded(supernet, shape).arch(supernet)` computing the sub-network of `width_masks`."""
    tree = extract(params, supernet, padded(supernet, shape))
    layers = {}
    for j, layer in tree["encoder"].items():
        index = int(j.removeprefix("layer_"))
        attention = layer["attention"]
        out = attention["output"]["kernel"] * head_mask[index][:, None, None]
        layers[j] = {
            **layer,
            "attention": {**attention, "output": {**attention["output"], "kernel": out}},
            "output": {**layer["output"], "kernel": layer["output"]["kernel"] * ffn_mask[index][:, None]},
        }
    return {**tree, "encoder": layers}


@dataclasses.dataclass(frozen=True)
class SubnetChoices:
    """The sub-networks a supernet is trained on: a layer count, a hidden size, then each layer's heads
    and FFN size from these choices (heads only those that fit the hidden size); `layer_map` names which
    supernet layers an L-layer sub-network runs (`distill.kd.layers.teacher_layers`)."""

    layers: tuple[int, ...]
    hidden: tuple[int, ...]
    heads: tuple[int, ...]
    ffn: tuple[int, ...]
    layer_map: str = "uniform"

    def __post_init__(self):
        for field in ("layers", "hidden", "heads", "ffn"):
            values = tuple(sorted({int(v) for v in getattr(self, field)}))
            if not values or values[0] < 1:
                raise ArchError(f"{field}: needs positive choices, got {getattr(self, field)!r}")
            object.__setattr__(self, field, values)
        if self.layer_map not in LAYER_MAPS:
            raise ArchError(f"layer_map: {self.layer_map!r} is not one of {', '.join(LAYER_MAPS)}")

    def check(self, supernet: BertArch) -> None:
        """Raise `ArchError` naming the field when the supernet cannot represent every choice."""
        check_supernet(supernet)
        limits = {
            "layers": supernet.num_layers,
            "hidden": supernet.hidden_size,
            "heads": supernet.num_heads[0],
            "ffn": supernet.ffn_sizes[0],
        }
        for field, limit in limits.items():
            if max(getattr(self, field)) > limit:
                raise ArchError(f"{field}: choice {max(getattr(self, field))} exceeds the supernet's {limit}")
        for h in self.hidden:
            if h % supernet.head_size:
                raise ArchError(f"hidden: {h} is not a multiple of the supernet's head size {supernet.head_size}")
            if not self.fitting_heads(h, supernet):
                raise ArchError(f"heads: no choice fits hidden size {h} (head size {supernet.head_size})")

    def fitting_heads(self, hidden: int, supernet: BertArch) -> tuple[int, ...]:
        return tuple(n for n in self.heads if n * supernet.head_size <= hidden)

    def subnet(self, supernet: BertArch, hidden: int, heads: tuple[int, ...], ffn: tuple[int, ...]) -> Subnet:
        """The sub-network with these widths; its layers come from `layer_map`."""
        layers = teacher_layers(self.layer_map, supernet.num_layers, len(heads))
        return Subnet(layers, hidden, heads, ffn)

    def largest(self, supernet: BertArch) -> Subnet:
        n, h = max(self.layers), max(self.hidden)
        return self.subnet(supernet, h, (max(self.fitting_heads(h, supernet)),) * n, (max(self.ffn),) * n)

    def smallest(self, supernet: BertArch) -> Subnet:
        n, h = min(self.layers), min(self.hidden)
        return self.subnet(supernet, h, (min(self.heads),) * n, (min(self.ffn),) * n)

    def sample(self, supernet: BertArch, rng: np.random.Generator) -> Subnet:
        """A random sub-network: the layer count and hidden size, then each layer's heads and FFN size."""
        n = int(rng.choice(self.layers))
        h = int(rng.choice(self.hidden))
        fits = self.fitting_heads(h, supernet)
        heads = tuple(int(rng.choice(fits)) for _ in range(n))
        ffn = tuple(int(rng.choice(self.ffn)) for _ in range(n))
        return self.subnet(supernet, h, heads, ffn)

    def sandwich(self, supernet: BertArch, step: int, seed: int, num_sampled: int) -> tuple[Subnet, ...]:
        """The sub-networks trained at `step` (a function of the step, so a resumed run trains the same ones):
        the largest, the smallest and `num_sampled` random ones."""
        rng = np.random.default_rng([seed & 0xFFFFFFFF, step])  # any int seed, negative included
        sampled = tuple(self.sample(supernet, rng) for _ in range(num_sampled))
        return (self.largest(supernet), self.smallest(supernet), *sampled)
