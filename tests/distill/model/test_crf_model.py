"""The CRF option of the tagging head: parameters, counts, the CRF loss and constrained decoding.

No training here (see test_crf_tagging.py): a tiny model (2 layers, hidden 36,
3 heads) with random parameters, random CRF scores included.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from helpers import conll_sentences, make_tokenizer

from distill.arch import BertArch
from distill.kd.losses import IGNORE, hard_loss, tagging_loss
from distill.model.bert import abstract_params, build_model
from distill.model.crf import CrfParams, constrain, iob2_constraints, log_likelihood
from distill.run.evaluation import predict_features, task_outputs, viterbi_tags
from tasks.base import TaggingExample
from tasks.decode import predict_labels
from tasks.errors import UserError
from tasks.features import encode
from tasks.registry import get_task

TAGS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("arch_name", ["tiny_arch", "hetero_arch"])
def test_param_count_includes_the_crf(arch_name, request):
    arch = request.getfixturevalue(arch_name)
    with_crf = abstract_params(build_model(arch, "tagging", 5, crf=True))
    without = abstract_params(build_model(arch, "tagging", 5))
    assert {k: v.shape for k, v in with_crf["crf"].items()} == {"transitions": (5, 5), "start": (5,), "end": (5,)}
    assert _count(with_crf) == arch.num_params("tagging", 5, crf=True)
    assert _count(without) == arch.num_params("tagging", 5)
    assert _count(with_crf) - _count(without) == 5 * 5 + 2 * 5


def test_crf_needs_the_tagging_head(tiny_arch):
    for head in ("classification", "regression", "span", "none"):
        with pytest.raises(UserError, match="token-tagging"):
            build_model(tiny_arch, head, 2, crf=True)


def _tagging_batch(seed: int = 3):
    """Ids, mask, gold labels (B=4, T=7): valid IOB2 gold tags on 'first sub-tokens', -100 elsewhere;
    row 2 has weight 0 (a padding row), row 3 has one tagged position."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, 101, size=(4, 7)).astype(np.int32)
    ids[:, 0] = 2
    mask = (np.arange(7)[None] < np.array([7, 6, 4, 3])[:, None]).astype(np.int32)
    labels = np.full((4, 7), IGNORE, np.int32)
    labels[0, [1, 2, 3, 5]] = [1, 2, 0, 3]  # B-PER I-PER O B-LOC (position 4 a second sub-token)
    labels[1, [1, 2, 3, 4]] = [3, 4, 4, 0]  # B-LOC I-LOC I-LOC O
    labels[2, [1, 2]] = [1, 0]
    labels[3, [1]] = [3]
    weights = np.array([1.0, 1.0, 0.0, 1.0], np.float32)
    return {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": mask,
            "labels": labels, "weights": weights}


def test_crf_loss_is_the_negative_log_likelihood_of_each_sentence(tiny_arch, random_params):
    model = build_model(tiny_arch, "tagging", len(TAGS), crf=True)
    params = random_params(tiny_arch, "tagging", len(TAGS), crf=True)
    batch = _tagging_batch()
    out = model.apply({"params": params}, batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    assert out.crf is not None and out.logits.shape == (4, 7, len(TAGS))
    total, count = hard_loss("tagging", out, batch, TAGS)

    crf = constrain(CrfParams(**params["crf"]), *iob2_constraints(TAGS))
    expected, tagged = 0.0, 0
    for b in range(4):
        pos = np.flatnonzero(batch["labels"][b] != IGNORE)
        if batch["weights"][b] == 0:
            continue
        em = np.asarray(out.logits)[b, pos][None]
        gold = batch["labels"][b, pos][None]
        expected -= float(log_likelihood(crf, em, gold, np.ones_like(gold))[0])
        tagged += len(pos)
    np.testing.assert_allclose(float(total), expected, rtol=1e-5)
    assert float(count) == tagged == 4 + 4 + 1


def test_zero_crf_scores_give_the_per_token_cross_entropy(tiny_arch, random_params):
    """Unconstrained and at zero, the chain factorises: the CRF loss is the token cross-entropy."""
    model = build_model(tiny_arch, "tagging", len(TAGS), crf=True)
    params = random_params(tiny_arch, "tagging", len(TAGS), crf=True)
    params["crf"] = jax.tree.map(jnp.zeros_like, params["crf"])
    batch = _tagging_batch()
    out = model.apply({"params": params}, batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    crf_sum, crf_count = hard_loss("tagging", out, batch)
    ce_sum, ce_count = tagging_loss(out.logits, batch)
    np.testing.assert_allclose(float(crf_sum), float(ce_sum), rtol=1e-5)
    assert float(crf_count) == float(ce_count)
    # The constraints only add mass to forbid: the constrained loss of valid gold tags is smaller.
    assert float(hard_loss("tagging", out, batch, TAGS)[0]) < float(crf_sum)


def test_crf_loss_trains_the_transitions(tiny_arch, random_params):
    model = build_model(tiny_arch, "tagging", len(TAGS), crf=True)
    params = random_params(tiny_arch, "tagging", len(TAGS), crf=True)
    batch = _tagging_batch()

    def loss(p):
        out = model.apply({"params": p}, batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        total, count = hard_loss("tagging", out, batch, TAGS)
        return total / count

    grads = jax.grad(loss)(params)
    g = np.asarray(grads["crf"]["transitions"])
    allowed, _ = iob2_constraints(TAGS)
    assert np.abs(g[allowed]).max() > 0
    assert np.all(g[~allowed] == 0)  # forbidden moves are constants: never trained
    assert np.abs(np.asarray(grads["classifier"]["kernel"])).max() > 0


def _valid_iob2(tags) -> bool:
    """Every I-X continues a B-X or I-X."""
    return all(not t.startswith("I-") or (i > 0 and tags[i - 1] in ("B" + t[1:], t)) for i, t in enumerate(tags))


def test_viterbi_decoding_never_emits_invalid_iob2(tmp_path):
    """Emissions that favour I- tags everywhere: argmax breaks IOB2 on most sentences, Viterbi on none."""
    task = get_task("conll2003")
    tok = make_tokenizer(tmp_path / "vocab")
    arch = BertArch.uniform(2, 36, 3, 37, vocab_size=len(tok), max_position_embeddings=task.max_length)
    model = build_model(arch, "tagging", task.num_labels, crf=True)
    rng = np.random.default_rng(0)
    shapes = abstract_params(model)
    params = jax.tree.map(lambda x: rng.normal(0, 0.3, x.shape).astype(np.float32), shapes)
    bias = np.zeros(task.num_labels, np.float32)
    bias[[task.labels.index(t) for t in ("I-PER", "I-ORG", "I-LOC", "I-MISC")]] = 3.0
    params["classifier"]["bias"] = bias
    # Transitions that reward the forbidden moves most: only the constraints stop them.
    allowed, _ = iob2_constraints(task.labels)
    params["crf"]["transitions"] = np.where(allowed, 0.0, 5.0).astype(np.float32)
    params["crf"]["start"] = np.array([5.0 if t.startswith("I-") else 0.0 for t in task.labels], np.float32)

    examples = [TaggingExample(str(i), tuple(w for w, _, _ in s), tuple(t for _, _, t in s))
                for i, s in enumerate(conll_sentences(40, seed=5))]
    features = encode(task, examples, tok)
    logits = predict_features(model, params, features, batch_size=16)
    argmax = predict_labels(task, features, logits, examples)
    viterbi = predict_labels(task, features, task_outputs(model, params, task, features, 16), examples)
    assert sum(not _valid_iob2(t) for t in argmax) >= 30  # the test has teeth
    assert all(_valid_iob2(t) for t in viterbi)
    assert [len(t) for t in viterbi] == [len(e.tokens) for e in examples]
    assert sum(t != "O" for tags in viterbi for t in tags) > 0  # not all 'O' either


def test_viterbi_tags_decode_each_feature_on_its_own(tmp_path):
    """Chunked decoding (padding the last chunk) equals decoding every feature alone."""
    task = get_task("conll2003")
    tok = make_tokenizer(tmp_path / "vocab")
    examples = [TaggingExample(str(i), tuple(w for w, _, _ in s), tuple(t for _, _, t in s))
                for i, s in enumerate(conll_sentences(7, seed=2))]
    features = encode(task, examples, tok)
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(len(features), task.max_length, task.num_labels)).astype(np.float32)
    crf = {k: rng.normal(size=s).astype(np.float32) for k, s in
           (("transitions", (9, 9)), ("start", (9,)), ("end", (9,)))}
    together = viterbi_tags(crf, logits, features, task.labels, chunk=3)
    for i in range(len(features)):
        one = _one_feature(features, i)
        np.testing.assert_array_equal(viterbi_tags(crf, logits[i : i + 1], one, task.labels, chunk=1)[0], together[i])
    first = np.zeros_like(together, bool)
    for i, words in enumerate(features.word_ids):
        first[i, : len(words)] = (words >= 0) & (words != np.concatenate([[-1], words[:-1]]))
    assert np.all(together[~first] == 0)


def _one_feature(features, i):
    return dataclasses.replace(
        features, input_ids=features.input_ids[i : i + 1], token_type_ids=features.token_type_ids[i : i + 1],
        lengths=features.lengths[i : i + 1], example_index=features.example_index[i : i + 1],
        labels=features.labels[i : i + 1], word_ids=features.word_ids[i : i + 1],
    )


def test_flat_param_names_of_a_crf_tagger(tiny_arch):
    flat = traverse_util.flatten_dict(abstract_params(build_model(tiny_arch, "tagging", 3, crf=True)))
    assert {p for p in flat if p[0] == "crf"} == {("crf", "transitions"), ("crf", "start"), ("crf", "end")}
