"""One Flax (linen) BERT for teacher and students.

Layers may differ in their number of heads and FFN size (see `BertArch`).
The model returns logits plus, on request, every layer's hidden states and
pre-softmax attention scores, which distillation needs.

Parameter tree (HF names in `distill/model/hf.py` map onto it one to one):

    embeddings/{word_embeddings,position_embeddings,token_type_embeddings,LayerNorm}
    encoder/layer_{g}/attention/{qkv,output}   qkv kernel: (hidden, 3, heads, head_size)
    encoder/layer_{g}/{attention_norm,intermediate,output,output_norm}
                                                one per parameter group g (= per layer unless
                                                `arch.layer_groups` makes layers share one)
    pooler                                      (sentence-level heads only)
    classifier | qa_outputs                     (the task head)
    crf/{transitions,start,end}                 (tagging with a CRF: `distill.model.crf.CrfParams`)

A tagging model built with `crf=True` still returns per-token logits (the
CRF's emission scores); the CRF's own scores come back in `BertOutput.crf`
for the loss (`losses.crf_tagging_loss`) and for Viterbi decoding.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct
from flax.linen.dtypes import promote_dtype
from jax import lax

from distill.arch import HEADS, PRECISIONS, BertArch, has_pooler
from distill.model.attention import cpu_attention
from distill.model.crf import CrfParams
from tasks.errors import UserError

Dtype = Any


@struct.dataclass
class BertOutput:
    """Logits and the intermediates distillation needs.

    logits: (B, C) for sentence heads, (B, T, C) for tagging, (B, T, 2) for
      span (start, end); None for head 'none'.
    hidden_states: embeddings output then each layer's output, (B, T, hidden)
      each, when requested.
    attention_scores: each layer's scaled, pre-softmax, unmasked scores
      (B, heads, T, T), when requested.
    """

    logits: jax.Array | None
    sequence_output: jax.Array
    pooled_output: jax.Array | None = None
    hidden_states: tuple[jax.Array, ...] | None = None
    attention_scores: tuple[jax.Array, ...] | None = None
    crf: CrfParams | None = None
    """A CRF tagger's transition, start and end scores (unconstrained); None without a CRF."""


def _dense_init(arch: BertArch):
    return nn.initializers.normal(stddev=arch.initializer_range)


def _layer_norm(arch: BertArch, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=arch.layer_norm_eps, dtype=jnp.float32, name=name)


_NN = (((1,), (0,)), ((), ()))  # (M, K) x (K, N): contract the lhs's last dim with the rhs's first
_NT = (((1,), (1,)), ((), ()))  # (M, N) x (K, N) -> (M, K)
_TN = (((0,), (0,)), ((), ()))  # (M, K) x (M, N) -> (K, N)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _bf16_matmul(x: jax.Array, kernel: jax.Array, result: str) -> jax.Array:
    bf16 = jnp.bfloat16
    return lax.dot_general(x.astype(bf16), kernel.astype(bf16), _NN, preferred_element_type=result)


def _bf16_matmul_fwd(x, kernel, result):
    return _bf16_matmul(x, kernel, result), (x, kernel)


def _row_major_transpose(x: jax.Array) -> jax.Array:
    """`x.T` for 2-D `x` (at least 2 rows), written out in row-major order. XLA folds a plain transpose
    into the matmul that consumes it, which gives `_TN`'s form; the concatenation of two transposed row
    blocks is a new array that it cannot fold."""
    half = x.shape[0] // 2
    return jnp.concatenate([x[:half].T, x[half:].T], axis=1)


def _weight_gradient(x: jax.Array, g: jax.Array) -> jax.Array:
    """`x.T @ g` in float32 from bfloat16 operands. XLA:CPU runs the `_TN` form (both operands contract
    their rows) in float32 at a fifth of its bfloat16 speed; on the CPU the gradient is computed as
    `_row_major_transpose(x) @ g` instead, the `_NN` form its bfloat16 kernels take: 1.5-3.5x faster
    over the teacher's shapes (batch 32 x length 32, hidden 384 to FFN 1,536: 270 -> 900 GFLOP/s on an
    AMX Xeon), the copy included. GPUs and TPUs take every form, and so does a CPU split into several
    devices, where the rows are spread over the devices and the copy's halves would move between them."""
    if jax.default_backend() == "cpu" and jax.local_device_count() == 1 and x.shape[0] >= 2:
        return lax.dot_general(_row_major_transpose(x), g, _NN, preferred_element_type=jnp.float32)
    return lax.dot_general(x, g, _TN, preferred_element_type=jnp.float32)


def _bf16_matmul_bwd(result, res, g):
    x, kernel = res  # as given (the kernel: float32 master weights): each cotangent comes back in its dtype
    bf16 = jnp.bfloat16
    g = g.astype(bf16)
    dx = lax.dot_general(g, kernel.astype(bf16), _NT, preferred_element_type=result)
    dk = _weight_gradient(x.astype(bf16), g)
    return dx.astype(x.dtype), dk.astype(kernel.dtype)


_bf16_matmul.defvjp(_bf16_matmul_fwd, _bf16_matmul_bwd)


def bf16_results() -> bool:
    """Whether bfloat16 compute keeps matmul results and GELU inputs in bfloat16: on GPUs and TPUs, yes.
    There the matmuls run near peak and the bandwidth-bound elementwise work between them (bias, GELU,
    dropout, residuals, the activations saved for the backward pass) takes much of a step, and bfloat16
    halves its bytes, as PyTorch's autocast does. XLA:CPU runs its fast bfloat16 matmuls only with float32
    results, and its bfloat16 elementwise math is slower than float32's, so on CPU they stay float32."""
    return jax.default_backend() != "cpu"


def mixed_matmul(x: jax.Array, kernel: jax.Array, result: Dtype | None = None) -> jax.Array:
    """`x @ kernel` for 2-D `x` with bfloat16 operands and float32 accumulation, its gradients likewise
    (the kernel's cotangent float32, for float32 master weights). The result, and the input's cotangent
    before its cast to `x`'s dtype, are `result` (None: bfloat16 where `bf16_results()`, else float32).

    The forms are chosen for XLA's CPU backend, whose bfloat16 matmuls (AMX / AVX512-BF16, through its
    YNNPACK library calls) run only when the lhs contracts its last dimension and the result is float32:
    a bfloat16-result `jnp.dot` and the default gradient of one fall back to float32 at a fifth of the
    speed. The weight gradient contracts the rows of both operands, a form XLA:CPU runs in float32, so on
    the CPU it is computed from a transposed copy (`_weight_gradient`); the forward, the input gradient and
    the weight gradient all get the bfloat16 speed. GPUs and TPUs take every form."""
    if result is None:
        result = jnp.bfloat16 if bf16_results() else jnp.float32
    return _bf16_matmul(x.astype(jnp.bfloat16), kernel, jnp.dtype(result).name)


def _dense(features: int, init, dtype: Dtype, name: str, out_dtype: Dtype = jnp.float32) -> nn.Module:
    """A dense layer: `nn.Dense`, or in bfloat16 compute the `ReshapedDense` of the same parameters (kernel
    (in, out), bias (out,)) that runs `mixed_matmul` on the float32 kernel itself (flax's Dense would hand
    its matmul a kernel already cast to bfloat16, whose gradient would then be rounded to bfloat16); its
    result, in `out_dtype`, feeds the GELU, tanh or logits."""
    if jnp.dtype(dtype) == jnp.bfloat16:
        return ReshapedDense((features,), 1, init, dtype, out_dtype, name=name)
    return nn.Dense(features, kernel_init=init, dtype=dtype, name=name)


DROPOUT_LEVELS = 256
"""A dropout keep mask compares 8 random bits per element with a threshold, so rates are multiples of 1/256."""


def keep_mask(rng: jax.Array, shape: tuple[int, ...], rate: float) -> tuple[jax.Array, float]:
    """(mask, keep probability): each element kept with probability `round((1 - rate) * 256) / 256`, from 8
    random bits per element, four elements to a 32-bit threefry word. JAX's own bernoulli (flax's Dropout)
    spends a whole threefry block per element; on CPU those bits took 40-50 ms of a 335 ms teacher step.
    FlashAttention's dropout quantises its keep probability to 8 bits the same way."""
    keep = round((1.0 - rate) * DROPOUT_LEVELS)
    if keep >= DROPOUT_LEVELS:  # a rate under 1/512 keeps everything (and 256 is no uint8)
        return jnp.ones(shape, bool), 1.0
    n = math.prod(shape)
    words = jax.random.bits(rng, (-(-n // 4),), jnp.uint32)
    levels = lax.bitcast_convert_type(words, jnp.uint8).reshape(-1)[:n].reshape(shape)
    return levels < keep, keep / DROPOUT_LEVELS


class Dropout(nn.Module):
    """Inverted dropout with `keep_mask`'s 8-bit masks (flax's `nn.Dropout` interface: the 'dropout' RNG
    stream, `deterministic`). The rate is rounded to a multiple of 1/256 (0.1 drops 26/256 = 0.1016) and
    the kept values are scaled by the inverse of the keep probability actually used, so the expectation is
    unchanged."""

    rate: float

    @nn.compact
    def __call__(self, x, deterministic: bool):
        mask, keep = self.keep(x.shape, deterministic)
        if mask is None:
            return x
        return jnp.where(mask, x * jnp.asarray(1.0 / keep, x.dtype), jnp.zeros((), x.dtype))

    def keep(self, shape: tuple[int, ...], deterministic: bool) -> tuple[jax.Array | None, float]:
        """(mask, keep probability) applied to an input of `shape` (`__call__`, and the attention that
        takes its mask: `distill.model.attention.cpu_attention`); (None, 1.0) where it keeps everything, an
        all-False mask where it drops everything (no random bits drawn in either case)."""
        if deterministic or round(self.rate * DROPOUT_LEVELS) == 0:
            return None, 1.0
        if round((1.0 - self.rate) * DROPOUT_LEVELS) == 0:
            return jnp.zeros(shape, bool), 1.0
        return keep_mask(self.make_rng("dropout"), shape, self.rate)


class Embeddings(nn.Module):
    arch: BertArch
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids, token_type_ids, deterministic: bool, position_ids=None):
        arch, init = self.arch, _dense_init(self.arch)
        embed = lambda n, name: nn.Embed(n, arch.hidden_size, embedding_init=init, name=name)  # noqa: E731
        positions = position_ids  # packed rows: from each example's first token
        if positions is None:
            positions = lax.broadcasted_iota(jnp.int32, (1, input_ids.shape[-1]), 1)  # (1, T); symbolic T exports
        x = (
            embed(arch.vocab_size, "word_embeddings")(input_ids)
            + embed(arch.max_position_embeddings, "position_embeddings")(positions)
            + embed(arch.type_vocab_size, "token_type_embeddings")(token_type_ids)
        )
        x = _layer_norm(arch, "LayerNorm")(x)
        x = Dropout(arch.hidden_dropout)(x, deterministic=deterministic)
        return x.astype(self.dtype)


class ReshapedDense(nn.Module):
    """`nn.DenseGeneral` with multi-axis kernels computed as one 2-D matmul.

    The kernel keeps its structured shape (in_axes..., out_axes...), e.g.
    (hidden, 3, heads, head_size) for the fused QKV projection, so heads can
    be sliced, but the product runs as (tokens, in) @ (in, out), which XLA's
    CPU backend handles much faster than a multi-axis dot_general.
    """

    features: tuple[int, ...]
    in_axes: int
    kernel_init: Any
    dtype: Dtype = jnp.float32
    out_dtype: Dtype | None = None
    """The result's dtype in bfloat16 compute (None: `dtype`)."""

    @nn.compact
    def __call__(self, x):
        in_shape = x.shape[x.ndim - self.in_axes :]
        kernel = self.param("kernel", self.kernel_init, in_shape + self.features, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, self.features, jnp.float32)
        n_in, n_out = math.prod(in_shape), math.prod(self.features)
        lead = x.shape[: x.ndim - self.in_axes]
        # Cast and multiply as nn.Dense does (promote_dtype, then a dot, not `@`): int8 quantization
        # (distill.export.int8, qwix) intercepts both and finds the kernel behind its reshape.
        if jnp.dtype(self.dtype) == jnp.bfloat16:
            y = mixed_matmul(x.reshape(-1, n_in), kernel.reshape(n_in, n_out)) + bias.reshape(n_out)
            return y.astype(self.out_dtype or self.dtype).reshape(lead + self.features)
        x, kernel = promote_dtype(x.reshape(-1, n_in), kernel.reshape(n_in, n_out), dtype=self.dtype)
        y = jnp.dot(x, kernel)
        y = y + bias.reshape(n_out).astype(self.dtype)
        return y.reshape(lead + self.features)


class SelfAttention(nn.Module):
    arch: BertArch
    num_heads: int
    dtype: Dtype = jnp.float32
    attention: str = "xla"
    attention_dropout: bool = True

    @nn.compact
    def __call__(self, x, mask, deterministic: bool, return_scores: bool):
        arch = self.arch
        shape = (3, self.num_heads, arch.head_size)
        qkv = ReshapedDense(shape, 1, _dense_init(arch), self.dtype, name="qkv")(x)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, T, N, H)
        use_dropout = not deterministic and self.attention_dropout and arch.attention_dropout > 0
        scores = None
        if not return_scores and not deterministic and _own_cpu_attention():  # training on one CPU device
            keep, keep_prob = Dropout(arch.attention_dropout).keep(
                (x.shape[0], self.num_heads, x.shape[1], x.shape[1]), not use_dropout)
            context = cpu_attention(qkv, _heads_mask(mask), keep, keep_prob)
        elif return_scores or use_dropout:
            scores = jnp.einsum("btnh,bsnh->bnts", q, k) / jnp.sqrt(arch.head_size).astype(q.dtype)
            masked = jnp.where(_heads_mask(mask), scores, jnp.finfo(scores.dtype).min)
            probs = jax.nn.softmax(masked.astype(jnp.float32), axis=-1).astype(self.dtype)
            probs = Dropout(arch.attention_dropout)(probs, deterministic=deterministic)
            context = jnp.einsum("bnts,bsnh->btnh", probs, v)
        elif self.attention == "cudnn" and mask.ndim == 2 and x.shape[1] % 2 == 0:  # cuDNN's flash attention (its backward takes
            # even lengths only; an odd bucket goes through XLA); padding is always at the end of a row
            lengths = jnp.maximum(mask.sum(-1, dtype=jnp.int32), 1)  # padding rows (weight 0): never 0 keys
            context = jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths, implementation="cudnn")
        elif jax.default_backend() == "cpu":  # inference, and training on several CPU devices
            context = _attention(q, k, v, mask)
        else:  # GPUs/TPUs: the preset keeps the backward's products in bfloat16 (jax-ml/jax#24047)
            context = jax.nn.dot_product_attention(q, k, v, mask=_heads_mask(mask))
        out = ReshapedDense((arch.hidden_size,), 2, _dense_init(arch), self.dtype, name="output")(context)
        return out, scores


def _attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Softmax attention without scores or dropout on the CPU, as `jax.nn.dot_product_attention`'s XLA form
    computes it (float32 logits and softmax, probabilities in the inputs' dtype), written out: the
    query-key product with a float32 result and no precision preset, which XLA:CPU runs faster (teacher
    forward at 16 rows of 128 tokens in bfloat16 on an AMX Xeon: 133 -> 109 ms; no change at rows of
    16-32 tokens)."""
    logits = jnp.einsum("btnh,bsnh->bnts", q, k, preferred_element_type=jnp.float32) / math.sqrt(q.shape[-1])
    logits = jnp.where(_heads_mask(mask), logits, jnp.finfo(jnp.float32).min)
    return jnp.einsum("bnts,bsnh->btnh", jax.nn.softmax(logits, axis=-1).astype(v.dtype), v)


def _own_cpu_attention() -> bool:
    """Whether training's attention without scores runs `distill.model.attention.cpu_attention`: on one
    CPU device in all (several, in this process or across `jax.distributed` processes, split the batch
    between them, which its chunks would cut across). Inference keeps `_attention`, whose forward alone is
    5-8% faster (teacher bf16 forward at 16 x 128 and 64 x 32 rows)."""
    return jax.default_backend() == "cpu" and jax.device_count() == 1


def build_mask(attention_mask: jax.Array, packed: bool) -> jax.Array:
    """The boolean mask attention takes: (B, T) keys for padded rows (1 on real tokens); for packed rows
    (`tasks.packing`: each token's example number in its row, 0 on padding) (B, T, T) query-key pairs of
    one example."""
    if not packed:
        return attention_mask.astype(bool)
    return (attention_mask[:, :, None] == attention_mask[:, None, :]) & (attention_mask[:, None, :] > 0)


def _heads_mask(mask: jax.Array) -> jax.Array:
    """`build_mask`'s mask broadcast over heads: (B, 1, 1, T) or (B, 1, T, T)."""
    return mask[:, None, None, :] if mask.ndim == 2 else mask[:, None]


def first_tokens(x: jax.Array, cls_index: jax.Array | None) -> jax.Array:
    """Each example's first token ([CLS]) of (B, T, H) states: (B, H), or for packed rows (`cls_index`: flat
    indices r * T + t) (E, H)."""
    return x[:, 0] if cls_index is None else x.reshape(-1, x.shape[-1])[cls_index]


class Layer(nn.Module):
    arch: BertArch
    num_heads: int
    ffn_size: int
    dtype: Dtype = jnp.float32
    attention: str = "xla"
    attention_dropout: bool = True

    @nn.compact
    def __call__(self, x, mask, deterministic: bool, return_scores: bool):
        arch, init = self.arch, _dense_init(self.arch)
        dropout = Dropout(arch.hidden_dropout)
        attn, scores = SelfAttention(arch, self.num_heads, self.dtype, self.attention, self.attention_dropout,
                                     name="attention")(
            x, mask, deterministic, return_scores
        )
        x = _layer_norm(arch, "attention_norm")(x + dropout(attn, deterministic=deterministic)).astype(self.dtype)
        # the GELU's input in float32 on CPU, where bfloat16 elementwise math is slower (`bf16_results`)
        y = _dense(self.ffn_size, init, self.dtype, "intermediate", self.dtype if bf16_results() else jnp.float32)(x)
        y = nn.gelu(y, approximate=False).astype(self.dtype)
        y = _dense(arch.hidden_size, init, self.dtype, "output")(y)
        x = _layer_norm(arch, "output_norm")(x + dropout(y, deterministic=deterministic)).astype(self.dtype)
        return x, scores


class Encoder(nn.Module):
    """The layers in order. Layers of one parameter group (`arch.groups`) call the same `Layer` instance,
    so they share its weights (`layer_{g}`); hidden states and attention scores stay per layer."""

    arch: BertArch
    dtype: Dtype = jnp.float32
    attention: str = "xla"
    attention_dropout: bool = True

    @nn.compact
    def __call__(self, x, mask, deterministic: bool, output_hidden_states: bool, output_attentions: bool):
        arch = self.arch
        blocks = [
            Layer(arch, arch.num_heads[i], arch.ffn_sizes[i], self.dtype, self.attention, self.attention_dropout,
                  name=f"layer_{g}")
            for g, i in enumerate(arch.group_starts)
        ]
        hidden, scores = [x], []
        for g in arch.groups:
            x, s = blocks[g](x, mask, deterministic, output_attentions)
            hidden.append(x)
            scores.append(s)
        return (
            x,
            tuple(hidden) if output_hidden_states else None,
            tuple(scores) if output_attentions else None,
        )


def task_head(arch: BertArch, head: str, num_labels: int, dtype: Dtype, x, cls_index, deterministic: bool):
    """(pooled, float32 logits) of the last hidden states `x`, either None where `head` has none. Called inside
    a compact module (`BertForTask`, `TaskHead`): its parameters (pooler, classifier | qa_outputs) are that
    module's own."""
    init = _dense_init(arch)
    pooled = None
    if has_pooler(head):
        pooled = jnp.tanh(_dense(arch.hidden_size, init, dtype, "pooler")(first_tokens(x, cls_index)))
    dropout = Dropout(arch.hidden_dropout)
    logits = None
    if head in ("classification", "regression"):
        logits = _dense(num_labels, init, dtype, "classifier")(dropout(pooled, deterministic=deterministic))
    elif head == "tagging":
        logits = _dense(num_labels, init, dtype, "classifier")(dropout(x, deterministic=deterministic))
    elif head == "span":
        logits = _dense(2, init, dtype, "qa_outputs")(x)
    return pooled, (None if logits is None else logits.astype(jnp.float32))


class TaskHead(nn.Module):
    """`BertForTask`'s head alone (parameters: its pooler and classifier | qa_outputs): the last stage of a
    staged forward (`distill.model.staged`)."""

    arch: BertArch
    head: str
    num_labels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, cls_index=None):
        return task_head(self.arch, self.head, self.num_labels, self.dtype, x, cls_index, True)[1]


class Crf(nn.Module):
    """The scores of a linear-chain CRF over `num_tags` tags, zero at init (then the CRF's
    loss equals the per-token cross-entropy of the emissions)."""

    num_tags: int

    @nn.compact
    def __call__(self) -> CrfParams:
        k, zeros = self.num_tags, nn.initializers.zeros
        return CrfParams(
            self.param("transitions", zeros, (k, k), jnp.float32),
            self.param("start", zeros, (k,), jnp.float32),
            self.param("end", zeros, (k,), jnp.float32),
        )


class BertForTask(nn.Module):
    """BERT encoder with a task head.

    head: 'classification' (pooled [CLS] -> num_labels), 'regression'
      (pooled -> 1), 'tagging' (each token -> num_labels), 'span' (each token
      -> start/end logits) or 'none' (encoder and pooler only).
    dtype: computation dtype (bfloat16 on accelerators); parameters and
      LayerNorm statistics stay float32.
    crf: a linear-chain CRF over the tags (head 'tagging' only): parameters
      under `crf`, scores in `BertOutput.crf`; the logits stay the emissions.
    attention: 'xla', or 'cudnn' (fused flash attention on NVIDIA GPUs, bfloat16
      only), wherever no scores are returned and no attention dropout applies.
    attention_dropout: False turns off dropout on the attention probabilities
      (fused kernels take none), whatever `arch.attention_dropout` says.

    Packed rows (`tasks.packing`, sentence heads only): `attention_mask` holds each token's example number
    in its row, `position_ids` restart at each example and `cls_index` (E,) picks each example's [CLS], so
    logits and pooled outputs are per example (E, C); hidden states and scores stay per row.
    """

    arch: BertArch
    head: str = "none"
    num_labels: int = 0
    dtype: Dtype = jnp.float32
    crf: bool = False
    attention: str = "xla"
    attention_dropout: bool = True

    @nn.compact
    def __call__(
        self,
        input_ids,
        token_type_ids=None,
        attention_mask=None,
        *,
        position_ids=None,
        cls_index=None,
        deterministic: bool = True,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> BertOutput:
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}; valid: {HEADS}")
        if self.crf and self.head != "tagging":
            raise ValueError(f"a CRF needs the 'tagging' head, not {self.head!r}")
        arch = self.arch
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        packed = cls_index is not None
        if packed and (position_ids is None or not has_pooler(self.head)):
            raise ValueError(f"packed rows need position_ids and a sentence head, not {self.head!r}")
        mask = build_mask(attention_mask, packed)
        x = Embeddings(arch, self.dtype, name="embeddings")(input_ids, token_type_ids, deterministic, position_ids)
        x, hidden, scores = Encoder(arch, self.dtype, self.attention, self.attention_dropout, name="encoder")(
            x, mask, deterministic, output_hidden_states, output_attentions
        )
        pooled, logits = task_head(arch, self.head, self.num_labels, self.dtype, x, cls_index, deterministic)
        return BertOutput(
            logits=logits,
            sequence_output=x,
            pooled_output=pooled,
            hidden_states=hidden,
            attention_scores=scores,
            crf=Crf(self.num_labels, name="crf")() if self.crf else None,
        )


def build_model(
    arch: BertArch, head: str = "none", num_labels: int = 0, dtype: Dtype = jnp.float32, *, crf: bool = False
) -> BertForTask:
    """The model for a head; `crf` (tagging only, else a UserError) adds a linear-chain CRF over the tags."""
    if crf and head != "tagging":
        raise UserError(f"crf: a CRF needs a token-tagging task; this model's head is {head!r}")
    if head == "regression":
        num_labels = 1
    elif head == "span":
        num_labels = 2
    return BertForTask(arch, head, num_labels, dtype, bool(crf))


COMPUTE_DTYPES = dict(zip(PRECISIONS, (jnp.float32, jnp.bfloat16)))
"""`LoopConfig.precision` -> the model's compute dtype."""


def in_precision(model: BertForTask, precision: str, *, attention_dropout: bool = True) -> BertForTask:
    """`model` computing in `precision`'s dtype (the same parameters, which stay float32): the train steps'
    model, and the teacher's when it labels (`distill.run.data.teacher_labels`). In bfloat16 on an NVIDIA
    GPU its attention is cuDNN's fused kernel (`fused_attention`) wherever no scores or attention dropout
    are asked for; `attention_dropout=False` drops the latter (the default on accelerators: see
    `LoopConfig.attention_dropout`)."""
    dtype = COMPUTE_DTYPES[precision]
    settings = {"dtype": dtype, "attention": fused_attention(model.arch, dtype), "attention_dropout": attention_dropout}
    changed = {k: v for k, v in settings.items() if getattr(model, k) != v}
    return model.clone(**changed) if changed else model


def fused_attention(arch: BertArch, dtype: Dtype) -> str:
    """'cudnn' where cuDNN's flash attention takes the shapes (an NVIDIA GPU of compute capability 8.0 or
    later, bfloat16, head size a multiple of 8 up to 128), else 'xla'."""
    fits = jnp.dtype(dtype) == jnp.bfloat16 and arch.head_size % 8 == 0 and arch.head_size <= 128
    return "cudnn" if fits and _cudnn_device() else "xla"


def _cudnn_device() -> bool:
    """The default device is an NVIDIA GPU of compute capability 8.0 or later (cuDNN's flash attention)."""
    device = jax.devices()[0]
    if device.platform != "gpu" or "cuda" not in str(getattr(device.client, "platform_version", "")).lower():
        return False
    return float(getattr(device, "compute_capability", 0) or 0) >= 8.0


def init_params(model: BertForTask, rng: jax.Array, seq_len: int = 8) -> dict:
    """Random parameters (a plain nested dict) for `model`."""
    ids = jnp.zeros((1, seq_len), jnp.int32)
    return _jitted_init(model)(rng, ids, ids, jnp.ones_like(ids))["params"]


@functools.lru_cache(maxsize=32)
def _jitted_init(model: BertForTask):
    # One jitted init per (equal) model: `jax.jit(model.init)` on a fresh but
    # equal module misses jax's cache (bound methods compare by identity), and
    # every `load_bert` builds a fresh module, so each load recompiled the init.
    return jax.jit(model.init)


def abstract_params(model: BertForTask, seq_len: int = 8) -> dict:
    """Shapes and dtypes of the parameters, without allocating them."""
    ids = jnp.zeros((1, seq_len), jnp.int32)
    return jax.eval_shape(model.init, jax.random.key(0), ids, ids, ids)["params"]
