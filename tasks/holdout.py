"""A validation slice held out of the training examples, whole and leak-free (`split_off`).

The search selects on a slice of the training set, keeping dev unseen. On SST-2 a random slice misleads:
its training set holds every phrase of each sentence's parse (60,463 of its 67,349 examples occur inside
another one), so a random validation phrase has its sub-phrases and the sentences around it in training,
while dev holds whole sentences the model never saw in part. The teacher scored 96.65 on such a slice and
90.37 on dev, and lower learning rates that scored higher on dev scored lower on the slice (session 15).
`split_off` holds out whole examples (not inside another one) and drops from training every example that
repeats a held-out one or occurs inside one; on data where no example repeats or holds another it is a
plain seeded draw. What it guards is word-span containment, for the students: the teacher is still
fine-tuned on the whole training set (the slice included, so its own validation score stays high), and
pairs that share a premise or a context with a held-out pair (MNLI, SQuAD) stay in training.
"""

from __future__ import annotations

import logging

import numpy as np

from tasks.base import SpanExample, TaggingExample, TextExample

log = logging.getLogger(__name__)

SEP = "\x00"
"""Between a pair's texts in `example_words`: no word equals it, so a span of one text never matches a pair."""
MAX_SPANS = 50_000_000
"""The most word spans `_overlaps` hashes to find examples inside others (SST-2's 67,349 phrases: about 4
million); beyond, only repeats are found."""


def split_off(examples: list, n: int, seed: int = 0) -> tuple[list, list]:
    """(rest, held out): `n` examples drawn by a seeded permutation, both in their original order.

    Examples inside another one (or repeated) are drawn only when too few whole ones remain; every example
    that repeats a held-out one or occurs inside one is left out of the rest. The same (examples, n, seed)
    always gives the same split, so every run of a search holds out the same validation examples.
    """
    if not 0 <= n < len(examples):
        raise ValueError(f"cannot hold out {n} of {len(examples)} examples")
    words = [example_words(e) for e in examples]
    keys = [hash(w) for w in words]
    part, spans_of = _overlaps(words)
    order = np.random.default_rng(seed).permutation(len(examples))
    picked = ([i for i in order if keys[i] not in part] + [i for i in order if keys[i] in part])[:n]
    held = np.zeros(len(examples), bool)
    held[picked] = True
    leaked = spans_of([words[i] for i in picked])
    rest = [e for e, k, h in zip(examples, keys, held) if not h and k not in leaked]
    if len(rest) + n < len(examples):
        log.info("validation: %d examples held out whole; %d training examples that repeat one or occur inside "
                 "one are left out of training", n, len(examples) - n - len(rest))
    return rest, [e for e, h in zip(examples, held) if h]


def example_words(e) -> tuple[str, ...]:
    """The lowercased words of an example's text, a pair's two texts apart (`SEP`)."""
    if isinstance(e, TaggingExample):
        return tuple(t.lower() for t in e.tokens)
    if isinstance(e, SpanExample):
        return (*e.question.lower().split(), SEP, *e.context.lower().split())
    if isinstance(e, TextExample):
        pair = (SEP, *e.text_b.lower().split()) if e.text_b is not None else ()
        return (*e.text_a.lower().split(), *pair)
    raise TypeError(f"example_words: not an example: {type(e).__name__}")


def _overlaps(words: list[tuple[str, ...]]):
    """(hashes of the texts that are not whole: repeated, or inside another example's words; `spans_of`):
    `spans_of(held)` is the set of hashes of every span of `held` that is some example's whole text."""
    keys, repeated = set(), set()
    for w in words:
        (repeated if hash(w) in keys else keys).add(hash(w))
    lengths = sorted({len(w) for w in words})
    searchable = sum(len(w) * min(len(w), len(lengths)) for w in words) <= MAX_SPANS

    def spans(w: tuple[str, ...], proper: bool):
        for k in lengths:
            if k > len(w) or (proper and k == len(w)):
                break
            for s in range(len(w) - k + 1):
                if (h := hash(w[s:s + k])) in keys:
                    yield h

    if searchable:
        inside = {h for w in words for h in spans(w, proper=True)}
    else:
        log.warning("validation: %d examples are too long to search for one inside another; only repeats are "
                    "kept out of training", len(words))
        inside = set()

    def spans_of(held: list[tuple[str, ...]]) -> set[int]:
        return {h for w in held for h in spans(w, proper=False)} if searchable else {hash(w) for w in held}

    return inside | repeated, spans_of
