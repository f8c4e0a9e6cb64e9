"""Shared fixtures for the distill tests: tiny odd-sized archs, a tiny tokenizer, random params."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from distill.arch import BertArch
from distill.model.bert import abstract_params, build_model

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + (
    "the a an is was of to and in it good bad movie film great awful plot ##s ##ing ##ed , . !".split()
)


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    """A BertTokenizerFast over a 28-token vocab (ids fit any vocab_size >= 28).

    Built with `from_pretrained(dir)`: transformers 5 ignores
    `BertTokenizerFast(vocab_file=...)` and silently gives a 5-token tokenizer.
    """
    from transformers import BertTokenizerFast

    vocab_dir = tmp_path_factory.mktemp("vocab")
    (vocab_dir / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tokenizer = BertTokenizerFast.from_pretrained(str(vocab_dir))
    assert len(tokenizer) == len(VOCAB)
    assert tokenizer("The good films!")["input_ids"] == [2, 5, 15, 18, 22, 27, 3]
    return tokenizer


@pytest.fixture(scope="session")
def tiny_arch() -> BertArch:
    """2 layers, hidden 36, 3 heads of 12, FFN 37: odd sizes so shape bugs surface."""
    return BertArch.uniform(2, 36, 3, 37, vocab_size=101, max_position_embeddings=16)


@pytest.fixture(scope="session")
def hetero_arch() -> BertArch:
    """Heterogeneous: layer 0 has 1 head and FFN 20, layer 1 has 3 heads and FFN 37."""
    return BertArch(
        num_layers=2,
        hidden_size=36,
        head_size=12,
        num_heads=(1, 3),
        ffn_sizes=(20, 37),
        vocab_size=101,
        max_position_embeddings=16,
    )


@pytest.fixture(scope="session")
def random_params():
    """`make(arch, head, num_labels=0, seed=0, crf=False)` -> random params of `build_model(arch, head, num_labels, crf=crf)`.

    The tree comes from the model's own init (traced with `abstract_params`, so
    nothing is compiled); every leaf is N(0, 0.1), LayerNorm scales 1 + N(0, 0.1).
    A fresh `init_params` has zero biases and unit scales, which would hide a
    mis-mapped bias or scale; these values do not.
    """

    def make(arch: BertArch, head: str, num_labels: int = 0, seed: int = 0, crf: bool = False) -> dict:
        shapes = abstract_params(build_model(arch, head, num_labels, crf=crf))
        rng = np.random.default_rng(seed)

        def leaf(path, x):
            base = 1.0 if jax.tree_util.keystr(path).endswith("['scale']") else 0.0
            return (base + rng.normal(0.0, 0.1, x.shape)).astype(x.dtype)

        return jax.tree_util.tree_map_with_path(leaf, shapes)

    return make


@pytest.fixture
def padded_batch():
    """(input_ids, token_type_ids, attention_mask), int32 (3, 7): lengths 7, 4 and 2."""
    rng = np.random.default_rng(7)
    lengths = (7, 4, 2)
    ids = rng.integers(5, 101, size=(3, 7)).astype(np.int32)
    ids[:, 0] = 2  # [CLS]
    mask = (np.arange(7)[None, :] < np.array(lengths)[:, None]).astype(np.int32)
    types = np.zeros_like(ids)
    types[0, 4:] = 1  # the full row is a sentence pair
    ids = np.where(mask == 1, ids, 0)
    return ids, types, mask
