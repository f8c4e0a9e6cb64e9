"""The linear-chain CRF against brute-force enumeration of every tag sequence on tiny inputs."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill.model.crf import (
    FORBIDDEN,
    CrfParams,
    compact,
    constrain,
    expand,
    iob2_constraints,
    log_likelihood,
    log_partition,
    sequence_score,
    viterbi,
)

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def _params(k: int, seed: int = 0) -> CrfParams:
    r = np.random.default_rng(seed)
    return CrfParams(*(jnp.asarray(r.normal(size=s), jnp.float32) for s in ((k, k), (k,), (k,))))


def _brute(params: CrfParams, emissions: np.ndarray, n: int):
    """Every sequence of length n: (log partition, best sequence, best score)."""
    p = jax.tree.map(np.asarray, params)
    scores = {}
    for seq in itertools.product(range(emissions.shape[-1]), repeat=n):
        s = p.start[seq[0]] + p.end[seq[-1]] + sum(emissions[t, seq[t]] for t in range(n))
        s += sum(p.transitions[seq[t - 1], seq[t]] for t in range(1, n))
        scores[seq] = s
    values = np.array(list(scores.values()), np.float64)
    best = max(scores, key=scores.get)
    return np.log(np.exp(values - values.max()).sum()) + values.max(), best, scores[best], scores


@pytest.fixture
def batch():
    """3 rows of odd lengths 4, 1 and 3 (padded to 5), 3 tags."""
    r = np.random.default_rng(1)
    emissions = r.normal(size=(3, 5, 3)).astype(np.float32)
    lengths = np.array([4, 1, 3])
    mask = np.arange(5)[None] < lengths[:, None]
    return emissions, mask, lengths


def test_partition_and_viterbi_equal_enumeration(batch):
    emissions, mask, lengths = batch
    params = _params(3)
    logz = jax.jit(log_partition)(params, emissions, mask)
    tags, best = jax.jit(viterbi)(params, emissions, mask)
    for b, n in enumerate(lengths):
        want_z, want_seq, want_best, scores = _brute(params, emissions[b], n)
        np.testing.assert_allclose(logz[b], want_z, rtol=1e-5)
        assert tuple(np.asarray(tags[b, :n])) == want_seq and not np.asarray(tags[b, n:]).any()
        np.testing.assert_allclose(best[b], want_best, rtol=1e-5)
        # The score of any sequence, and its likelihood, agree with the enumeration too.
        seq = np.zeros(5, np.int32)
        seq[:n] = list(scores)[7 % len(scores)]
        got = sequence_score(params, emissions[b : b + 1], seq[None], mask[b : b + 1])[0]
        np.testing.assert_allclose(got, scores[tuple(seq[:n])], rtol=1e-5)
        ll = log_likelihood(params, emissions[b : b + 1], seq[None], mask[b : b + 1])[0]
        np.testing.assert_allclose(ll, scores[tuple(seq[:n])] - want_z, rtol=1e-4, atol=1e-5)


def test_likelihoods_sum_to_one_and_empty_rows_score_zero(batch):
    emissions, mask, _ = batch
    params = _params(3, seed=2)
    n = 3
    total = sum(
        np.exp(log_likelihood(params, emissions[2:3], np.array([list(s) + [0, 0]]), mask[2:3])[0])
        for s in itertools.product(range(3), repeat=n)
    )
    np.testing.assert_allclose(total, 1.0, rtol=1e-5)
    empty = np.zeros((1, 5), bool)
    assert log_likelihood(params, emissions[:1], np.zeros((1, 5), np.int32), empty)[0] == 0.0
    tags, score = viterbi(params, emissions[:1], empty)
    assert not np.asarray(tags).any() and score[0] == 0.0


def test_gradient_is_finite_and_training_raises_the_likelihood(batch):
    emissions, mask, _ = batch
    gold = np.array([[0, 1, 2, 1, 0], [2, 0, 0, 0, 0], [1, 1, 0, 0, 0]], np.int32)
    params = _params(3, seed=3)

    def loss(p, e):
        return -jnp.sum(log_likelihood(p, e, gold, mask))

    grad_fn = jax.jit(jax.grad(loss, argnums=(0, 1)))
    before = loss(params, emissions)
    e = jnp.asarray(emissions)
    for _ in range(50):
        gp, ge = grad_fn(params, e)
        assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves((gp, ge)))
        params = jax.tree.map(lambda a, g: a - 0.1 * g, params, gp)
        e = e - 0.1 * ge
    assert loss(params, e) < 0.5 * before
    tags, _ = viterbi(params, e, mask)
    np.testing.assert_array_equal(np.where(mask, tags, 0), np.where(mask, gold, 0))


def test_iob2_constraints():
    allowed, start = iob2_constraints(LABELS)
    idx = {label: i for i, label in enumerate(LABELS)}
    assert not allowed[idx["O"], idx["I-PER"]] and not allowed[idx["B-LOC"], idx["I-PER"]]
    assert not allowed[idx["I-LOC"], idx["I-PER"]]
    assert allowed[idx["B-PER"], idx["I-PER"]] and allowed[idx["I-PER"], idx["I-PER"]]
    assert allowed[idx["I-PER"], idx["O"]] and allowed[idx["O"], idx["B-LOC"]] and allowed[idx["I-LOC"], idx["B-PER"]]
    assert start.tolist() == [True, True, False, True, False]
    with pytest.raises(ValueError, match="IOB2"):
        iob2_constraints(["O", "PER"])


def test_constrained_decoding_never_produces_invalid_moves():
    """Emissions that favour I- tags everywhere: the constrained best path is the best valid one."""
    k, n = len(LABELS), 4
    r = np.random.default_rng(4)
    emissions = r.normal(size=(1, n, k)).astype(np.float32)
    emissions[..., [2, 4]] += 3.0  # I-PER, I-LOC
    allowed, start = iob2_constraints(LABELS)
    params = constrain(_params(k, seed=5), allowed, start)
    tags, score = viterbi(params, emissions, np.ones((1, n), bool))
    seq = tuple(np.asarray(tags[0]))
    _, _, _, scores = _brute(params, emissions[0], n)
    valid = {s: v for s, v in scores.items() if start[s[0]] and all(allowed[a, b] for a, b in zip(s, s[1:]))}
    assert seq == max(valid, key=valid.get)
    np.testing.assert_allclose(score[0], valid[seq], rtol=1e-5)
    # Invalid sequences get (almost) no probability.
    bad = np.array([[0, 2, 2, 0]])  # O -> I-PER
    assert log_likelihood(params, emissions, bad, np.ones((1, n), bool))[0] < FORBIDDEN / 2


def test_compact_and_expand_round_trip():
    x = jnp.arange(2 * 6).reshape(2, 6)[..., None].astype(jnp.float32)
    mask = jnp.array([[0, 1, 0, 1, 1, 0], [1, 0, 0, 0, 0, 0]], bool)
    packed, new_mask, index = compact(x, mask)
    assert packed[0, :3, 0].tolist() == [1, 3, 4] and new_mask[0].tolist() == [1, 1, 1, 0, 0, 0]
    assert packed[1, :1, 0].tolist() == [6] and new_mask[1].tolist() == [1, 0, 0, 0, 0, 0]
    tags = jnp.where(new_mask, packed[..., 0].astype(jnp.int32), 0)
    back = expand(tags, index, mask, fill=-1)
    assert back[0].tolist() == [-1, 1, -1, 3, 4, -1] and back[1].tolist() == [6, -1, -1, -1, -1, -1]
