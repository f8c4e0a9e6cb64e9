"""TinyBERT-style data augmentation from the teacher's own WordPiece embeddings.

`augment(task, examples, tokenizer, word_embeddings, cfg)` makes `cfg.copies`
new examples per input example by replacing whole words with one of their
`cfg.neighbours` nearest words in the teacher's embedding matrix (cosine
similarity). No external word vectors and no network are needed.

A word of the data is represented by the WordPiece pieces the tokenizer gives
it: one piece -> its embedding row, several pieces -> the mean of their rows.
Candidates are the vocabulary's whole words (no '##' pieces, no special or
'[unused]' tokens, at least one letter). Punctuation around a word is kept and
only its core is replaced ('good.' -> 'great.'); bare punctuation is never
touched. For tagging tasks only words tagged 'O' change, so entity tags stay
valid. Labels and tags are copied as they are: the teacher labels the copies.

Each copy draws from its own numpy Generator seeded with (seed, example index,
copy index), so the output does not depend on how the work is ordered.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Iterable, Sequence

import numpy as np
from tqdm.auto import tqdm

from tasks.base import SpanExample, TaggingExample, Task, TextExample
from tasks.errors import UserError

log = logging.getLogger(__name__)

SPECIAL_TOKENS = frozenset({"[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]"})
CHUNK = 1024
"""Query rows per similarity block: 1024 x 30k float32 is 120 MB at most."""
TRIES = 5
"""Draws per copy before an unchanged copy is accepted."""
PROGRESS_MIN = 1000
"""Inputs with at least this many examples show a progress bar."""

_AFFIX = re.compile(r"^(\W*)(.*?)(\W*)$", re.DOTALL)


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """How many copies to make and how strongly to change them."""

    copies: int = 0
    """Augmented copies per example (0: augmentation off)."""
    replace_prob: float = 0.4
    """Probability that each eligible word is replaced."""
    neighbours: int = 15
    """Candidates per word: its K nearest whole-word vocabulary tokens."""
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.copies, int) or self.copies < 0:
            raise UserError(f"augment copies must be an integer >= 0, got {self.copies!r}")
        if not 0.0 < self.replace_prob <= 1.0:
            raise UserError(f"augment replace_prob must be in (0, 1], got {self.replace_prob!r}")
        if not isinstance(self.neighbours, int) or self.neighbours < 1:
            raise UserError(f"augment neighbours must be an integer >= 1, got {self.neighbours!r}")


# --- vocabulary and word vectors ---------------------------------------------


def is_uncased(tokenizer) -> bool:
    """Whether the tokenizer lower-cases its input (BERT uncased)."""
    lower = getattr(tokenizer, "do_lower_case", None)
    if lower is None:
        lower = getattr(tokenizer, "init_kwargs", {}).get("do_lower_case")
    return bool(lower)


def is_candidate(token: str, specials: Iterable[str] = SPECIAL_TOKENS) -> bool:
    """A whole-word vocabulary entry: no '##' piece, special or '[unused..]' token; has a letter."""
    if token.startswith("##") or token in specials or token.startswith("[unused"):
        return False
    return any(ch.isalpha() for ch in token)


def candidate_ids(tokenizer, vocab_rows: int) -> tuple[np.ndarray, list[str]]:
    """Ids (ascending) and strings of the candidate words that have an embedding row."""
    specials = SPECIAL_TOKENS | set(getattr(tokenizer, "all_special_tokens", ()))
    pairs = sorted(
        (i, tok) for tok, i in tokenizer.get_vocab().items() if i < vocab_rows and is_candidate(tok, specials)
    )
    return np.asarray([i for i, _ in pairs], dtype=np.int64), [tok for _, tok in pairs]


def normalise(word: str, lower: bool) -> str:
    return word.lower() if lower else word


def piece_ids(tokenizer, words: list[str]) -> list[list[int]]:
    """WordPiece ids of each word (no special tokens), [UNK] dropped."""
    if not words:
        return []
    ids = tokenizer(words, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False)
    unk = tokenizer.unk_token_id
    return [[i for i in row if i != unk] for row in ids["input_ids"]]


def word_vectors(pieces: list[list[int]], word_embeddings: np.ndarray) -> np.ndarray:
    """(N, H) float32, L2-normalised: the mean of each word's piece rows (one piece: its row)."""
    emb = np.asarray(word_embeddings, dtype=np.float32)
    out = np.zeros((len(pieces), emb.shape[1]), dtype=np.float32)
    for n, ids in enumerate(pieces):
        out[n] = emb[ids].mean(axis=0)
    return unit_rows(out)


def unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def top_k(sims: np.ndarray, k: int) -> np.ndarray:
    """(R, k) column indices of each row's k largest values, best first."""
    k = min(k, sims.shape[1])
    part = np.argpartition(sims, sims.shape[1] - k, axis=1)[:, -k:]
    order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


# --- neighbour table ----------------------------------------------------------


class NeighbourTable:
    """Up to k nearest candidate words of each known word; built once per (tokenizer, embeddings)."""

    def __init__(self, table: dict[str, tuple[str, ...]], k: int, lower: bool):
        self._table = table
        self.k = k
        self.lower = lower

    @classmethod
    def build(
        cls, tokenizer, word_embeddings: np.ndarray, k: int, words: Iterable[str] | None = None
    ) -> NeighbourTable:
        """Nearest candidates by cosine for `words` (default: every candidate word).

        Words are looked up after lower-casing when the tokenizer is uncased; a
        word whose pieces are all [UNK] gets no entry. Similarities are computed
        CHUNK query rows at a time against the normalised candidate rows.
        """
        if k < 1:
            raise UserError(f"neighbours must be >= 1, got {k}")
        emb = np.asarray(word_embeddings, dtype=np.float32)
        lower = is_uncased(tokenizer)
        cand_ids, cand_words = candidate_ids(tokenizer, emb.shape[0])
        if not len(cand_ids):
            raise UserError("the tokenizer's vocabulary has no whole-word tokens to replace words with")
        cands = unit_rows(emb[cand_ids])
        column = {w: c for c, w in enumerate(cand_words)}

        queries = list(cand_words) if words is None else list(dict.fromkeys(normalise(w, lower) for w in words))
        pieces = piece_ids(tokenizer, queries)
        keep = [n for n, p in enumerate(pieces) if p]
        queries = [queries[n] for n in keep]
        pieces = [pieces[n] for n in keep]
        id_column = {int(i): c for c, i in enumerate(cand_ids)}

        table: dict[str, tuple[str, ...]] = {}
        for start in range(0, len(queries), CHUNK):
            words_c = queries[start:start + CHUNK]
            pieces_c = pieces[start:start + CHUNK]
            sims = word_vectors(pieces_c, emb) @ cands.T
            for r, (w, p) in enumerate(zip(words_c, pieces_c)):
                for c in (column.get(w), id_column.get(p[0]) if len(p) == 1 else None):
                    if c is not None:
                        sims[r, c] = -np.inf
            best = top_k(sims, k)
            for r, w in enumerate(words_c):
                table[w] = tuple(cand_words[c] for c in best[r] if np.isfinite(sims[r, c]))
        return cls(table, k, lower)

    def neighbours(self, word: str) -> list[str]:
        """Up to k nearest candidate words, best first; never `word` itself; [] if unknown."""
        return list(self._table.get(normalise(word, self.lower), ()))

    def __contains__(self, word: str) -> bool:
        return normalise(word, self.lower) in self._table

    def __len__(self) -> int:
        return len(self._table)


# --- replacing words ----------------------------------------------------------


def split_affixes(token: str) -> tuple[str, str, str]:
    """'(good),' -> ('(', 'good', '),'): leading and trailing non-word characters kept apart."""
    m = _AFFIX.match(token)
    return m.group(1), m.group(2), m.group(3)


def eligible_core(token: str) -> str | None:
    """The replaceable core of a whitespace token, or None for punctuation and numbers."""
    core = split_affixes(token)[1]
    return core if any(ch.isalpha() for ch in core) else None


def match_case(template: str, word: str) -> str:
    """`word` in the case pattern of `template` (ALL CAPS or Capitalised); else unchanged."""
    if len(template) > 1 and template.isupper():
        return word.upper()
    if template[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def slots(tokens: Sequence[str], table: NeighbourTable, allowed: Sequence[bool] | None = None) -> list:
    """(position, prefix, core, suffix, neighbours) of each token that can be replaced."""
    out = []
    for i, tok in enumerate(tokens):
        if allowed is not None and not allowed[i]:
            continue
        core = eligible_core(tok)
        nbrs = table.neighbours(core) if core is not None else []
        if nbrs:
            prefix, core, suffix = split_affixes(tok)
            out.append((i, prefix, core, suffix, nbrs))
    return out


def replace(tokens: Sequence[str], places: list, rng: np.random.Generator, prob: float, recase: bool) -> list[str]:
    """One draw: each slot is replaced with probability `prob` by a uniformly chosen neighbour."""
    new = list(tokens)
    if not places:
        return new
    hit = rng.random(len(places)) < prob
    pick = rng.random(len(places))
    for (i, prefix, core, suffix, nbrs), h, u in zip(places, hit, pick):
        if h:
            word = nbrs[min(int(u * len(nbrs)), len(nbrs) - 1)]
            new[i] = prefix + (match_case(core, word) if recase else word) + suffix
    return new


def draw(groups: list[tuple[list[str], list]], rng: np.random.Generator, prob: float, recase: bool) -> list[list[str]]:
    """New tokens for each (tokens, slots) group; redrawn up to TRIES times while nothing changed."""
    new = [list(toks) for toks, _ in groups]
    if not any(places for _, places in groups):
        return new
    for _ in range(TRIES):
        new = [replace(toks, places, rng, prob, recase) for toks, places in groups]
        if any(n != list(toks) for n, (toks, _) in zip(new, groups)):
            break
    return new


# --- examples -----------------------------------------------------------------


def _example_words(example) -> list[str]:
    if isinstance(example, TaggingExample):
        return [t for t, tag in zip(example.tokens, example.tags) if tag == "O"]
    words = example.text_a.split()
    if example.text_b is not None:
        words += example.text_b.split()
    return words


def _copies_of(example, index: int, table: NeighbourTable, cfg: AugmentConfig, recase: bool) -> list:
    if isinstance(example, TaggingExample):
        toks = list(example.tokens)
        groups = [(toks, slots(toks, table, [tag == "O" for tag in example.tags]))]
    else:
        texts = [example.text_a] + ([example.text_b] if example.text_b is not None else [])
        groups = [(t.split(), slots(t.split(), table)) for t in texts]
    out = []
    for c in range(cfg.copies):
        rng = np.random.default_rng((cfg.seed, index, c))
        new = draw(groups, rng, cfg.replace_prob, recase)
        guid = f"{example.guid}-aug{c}"
        if isinstance(example, TaggingExample):
            out.append(dataclasses.replace(example, guid=guid, tokens=tuple(new[0])))
        else:
            b = " ".join(new[1]) if example.text_b is not None else None
            out.append(dataclasses.replace(example, guid=guid, text_a=" ".join(new[0]), text_b=b))
    return out


def _check_examples(task: Task, examples: Sequence) -> None:
    if task.kind == "span" or any(isinstance(e, SpanExample) for e in examples):
        raise UserError(f"augmentation does not support span tasks ({task.name}); use copies=0")
    cls = TaggingExample if task.kind == "tagging" else TextExample
    for e in examples:
        if not isinstance(e, cls):
            raise TypeError(f"expected {cls.__name__} examples for {task.name}, got {type(e).__name__}")


def augment(task: Task, examples: Sequence, tokenizer, word_embeddings: np.ndarray, cfg: AugmentConfig) -> list:
    """Only the new examples: `cfg.copies` per input, copy by copy: copy 0 of every example, then copy 1 of
    every example, ... Copy c of an example is the same whatever `cfg.copies` is, so the copies of a run with
    fewer of them are a prefix of these (their teacher labels are reused: `distill.kd.outputs`).

    Copies keep the input's type, label and tags; their guid gets '-aug{c}'.
    """
    _check_examples(task, examples)
    if cfg.copies == 0 or not examples:
        return []
    words = {core for e in examples for w in _example_words(e) if (core := eligible_core(w)) is not None}
    table = NeighbourTable.build(tokenizer, word_embeddings, cfg.neighbours, sorted(words))
    recase = table.lower
    by_copy: list[list] = [[] for _ in range(cfg.copies)]
    changed = 0
    bar = tqdm(
        examples, desc=f"augment {task.name}", unit="example", mininterval=2.0,
        disable=len(examples) < PROGRESS_MIN,
    )
    for index, example in enumerate(bar):
        made = _copies_of(example, index, table, cfg, recase)
        changed += sum(m != dataclasses.replace(example, guid=m.guid) for m in made)
        for copies, m in zip(by_copy, made):
            copies.append(m)
    out = [m for copies in by_copy for m in copies]
    log.info(
        "augment %s: %d examples -> %d copies (%d changed); %d of %d distinct words have neighbours",
        task.name, len(examples), len(out), changed, sum(bool(table.neighbours(w)) for w in words), len(words),
    )
    return out
