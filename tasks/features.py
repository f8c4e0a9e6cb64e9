"""Examples -> token ids: `encode(task, examples, tokenizer) -> Features`.

Features are ragged (one int32 array per feature, no padding); batching pads
them into buckets. Classification, regression and tagging give one feature
per example. SQuAD gives one feature per document window (`doc_stride`
context tokens shared by neighbouring windows, as the tokenizer's `stride`),
and `example_index` maps each feature back to its question.

The tokenizer is a transformers *fast* tokenizer (BERT WordPiece); all calls
are batched, so SST-2 train (67k sentences) encodes in a few seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from tasks.base import SpanExample, TaggingExample, Task, TextExample
from tasks.errors import UserError

IGNORE = -100
"""Label of tokens that carry no tagging label (special and non-first sub-tokens)."""


@dataclass(frozen=True)
class Features:
    """Token ids per feature plus what the task needs to train and evaluate."""

    kind: str
    """The task kind these were encoded for."""
    max_length: int
    """The task's max_length: no feature is longer; the default last bucket."""
    input_ids: list[np.ndarray]
    """int32 (T_i,) per feature, special tokens included."""
    token_type_ids: list[np.ndarray]
    """int32 (T_i,) per feature: 0 for text_a / question, 1 for text_b / context."""
    lengths: np.ndarray
    """int32 (N,): T_i."""
    example_index: np.ndarray
    """int32 (N,): the example each feature came from."""
    labels: np.ndarray | list[np.ndarray] | None = None
    """int32 (N,) class ids; float32 (N,) scores; tagging: int32 (T_i,) per
    feature, the tag id on each word's first sub-token, -100 elsewhere;
    None for unlabelled data and for span tasks."""
    word_ids: list[np.ndarray] | None = None
    """Tagging: int32 (T_i,) word index per token, -1 for special tokens."""
    start_positions: np.ndarray | None = None
    """Span: int32 (N,) answer start token, 0 (CLS) if not in the window."""
    end_positions: np.ndarray | None = None
    """Span: int32 (N,) answer end token (inclusive), 0 if not in the window."""
    offsets: list[np.ndarray] | None = None
    """Span: int32 (T_i, 2) context char offsets, (-1, -1) outside the context."""

    def __len__(self) -> int:
        return len(self.input_ids)


def encode(task: Task, examples: Sequence, tokenizer) -> Features:
    """Tokenize `examples` of `task` with a fast tokenizer into `Features`."""
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(f"task {task.name} needs a fast tokenizer (offsets, word ids)")
    if not examples:
        raise ValueError(f"no {task.name} examples to encode")
    if task.kind in ("classification", "regression"):
        return _encode_text(task, _typed(examples, TextExample), tokenizer)
    if task.kind == "tagging":
        return _encode_tagging(task, _typed(examples, TaggingExample), tokenizer)
    return _encode_span(task, _typed(examples, SpanExample), tokenizer)


def _typed(examples: Sequence, cls) -> list:
    for e in examples:
        if not isinstance(e, cls):
            raise TypeError(f"expected {cls.__name__} examples, got {type(e).__name__}")
    return list(examples)


def _arrays(rows) -> list[np.ndarray]:
    return [np.asarray(r, dtype=np.int32) for r in rows]


def _base(task: Task, enc, n_examples: int, **extra) -> Features:
    ids = _arrays(enc["input_ids"])
    return Features(
        kind=task.kind,
        max_length=task.max_length,
        input_ids=ids,
        token_type_ids=_arrays(enc["token_type_ids"]),
        lengths=np.asarray([len(x) for x in ids], dtype=np.int32),
        example_index=np.asarray(
            enc["overflow_to_sample_mapping"] if "overflow_to_sample_mapping" in enc
            else range(n_examples),
            dtype=np.int32,
        ),
        **extra,
    )


def _encode_text(task: Task, examples: list[TextExample], tok) -> Features:
    texts_a = [e.text_a for e in examples]
    texts_b = None
    if len(task.text_columns) == 2:
        texts_b = [e.text_b for e in examples]
        if any(t is None for t in texts_b):
            raise ValueError(f"task {task.name} needs sentence pairs; an example has no text_b")
    enc = tok(
        texts_a, texts_b, truncation=True, max_length=task.max_length,
        return_token_type_ids=True, return_attention_mask=False,
    )
    return _base(task, enc, len(examples), labels=_text_labels(task, examples))


def _text_labels(task: Task, examples: list[TextExample]) -> np.ndarray | None:
    raw = [e.label for e in examples]
    missing = sum(label is None for label in raw)
    if missing == len(raw):
        return None
    if missing:
        raise ValueError(f"{missing} of {len(raw)} examples have no label; label all or none")
    if task.kind == "regression":
        return np.asarray(raw, dtype=np.float32)
    ids = {name: i for i, name in enumerate(task.labels)}
    unknown = {label for label in raw if label not in ids}
    if unknown:
        raise ValueError(f"labels {sorted(unknown)} are not {task.name} labels {task.labels}")
    return np.asarray([ids[label] for label in raw], dtype=np.int32)


def _encode_tagging(task: Task, examples: list[TaggingExample], tok) -> Features:
    enc = tok(
        [list(e.tokens) for e in examples], is_split_into_words=True, truncation=True,
        max_length=task.max_length, return_token_type_ids=True, return_attention_mask=False,
    )
    tag_ids = {name: i for i, name in enumerate(task.labels)}
    word_ids, labels = [], []
    for i, ex in enumerate(examples):
        words = np.asarray([-1 if w is None else w for w in enc.word_ids(i)], dtype=np.int32)
        first = (words >= 0) & (words != np.concatenate([[-1], words[:-1]]))
        gold = np.full(len(words), IGNORE, dtype=np.int32)
        gold[first] = [tag_ids[ex.tags[w]] for w in words[first]]
        word_ids.append(words)
        labels.append(gold)
    return _base(task, enc, len(examples), labels=labels, word_ids=word_ids)


def _encode_span(task: Task, examples: list[SpanExample], tok) -> Features:
    questions = _cut_questions([e.question.lstrip() for e in examples], task.max_query_length, tok)
    enc = tok(
        questions, [e.context for e in examples], truncation="only_second",
        max_length=task.max_length, stride=task.doc_stride, return_overflowing_tokens=True,
        return_offsets_mapping=True, return_token_type_ids=True, return_attention_mask=False,
    )
    labelled = any(e.answers for e in examples)
    starts, ends, offsets = [], [], []
    for i, ex_i in enumerate(enc["overflow_to_sample_mapping"]):
        in_context = np.asarray([s == 1 for s in enc.sequence_ids(i)])
        off = np.asarray(enc["offset_mapping"][i], dtype=np.int32).reshape(-1, 2)
        off[~in_context] = -1
        offsets.append(off)
        answers = examples[ex_i].answers
        start, end = _answer_tokens(off, in_context, answers[0]) if answers else (0, 0)
        starts.append(start)
        ends.append(end)
    extra = {}
    if labelled:
        extra = {
            "start_positions": np.asarray(starts, dtype=np.int32),
            "end_positions": np.asarray(ends, dtype=np.int32),
        }
    return _base(task, enc, len(examples), offsets=offsets, **extra)


def _cut_questions(questions: list[str], max_tokens: int, tok) -> list[str]:
    """Questions cut to at most `max_tokens` word pieces (BERT's max_query_length)."""
    if not questions:
        return questions
    enc = tok(questions, add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for q, off in zip(questions, enc["offset_mapping"]):
        out.append(q[: off[max_tokens - 1][1]] if len(off) > max_tokens else q)
    return out


def _answer_tokens(off: np.ndarray, in_context: np.ndarray, answer: tuple[str, int]) -> tuple[int, int]:
    """(start, end) tokens of `answer` inside this window, else (0, 0)."""
    text, char_start = answer
    char_end = char_start + len(text)
    ctx = np.flatnonzero(in_context)
    if not len(ctx) or off[ctx[0], 0] > char_start or off[ctx[-1], 1] < char_end:
        return 0, 0
    start = ctx[np.flatnonzero(off[ctx, 0] <= char_start)[-1]]
    end = ctx[np.flatnonzero(off[ctx, 1] >= char_end)[0]]
    return int(start), int(end)
