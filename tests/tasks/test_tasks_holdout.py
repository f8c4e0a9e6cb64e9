"""`tasks.holdout.split_off`: the validation slice, held out whole and leak-free."""

from __future__ import annotations

import pytest

from tasks.base import SpanExample, TaggingExample, TextExample
from tasks.holdout import example_words, split_off


def text(i: int, words: str, b: str | None = None) -> TextExample:
    return TextExample(guid=str(i), text_a=words, text_b=b, label="1")


def test_distinct_whole_examples_split_as_a_plain_seeded_draw():
    """No example repeats or holds another: n of them held out, the rest all kept, both in order, and the
    same seed gives the same split."""
    examples = [text(i, f"w{i} x{i} y{i}") for i in range(50)]
    rest, held = split_off(examples, 7, seed=3)
    assert len(held) == 7 and len(rest) == 43 and sorted(rest + held, key=lambda e: int(e.guid)) == examples
    assert [int(e.guid) for e in held] == sorted(int(e.guid) for e in held)
    assert split_off(examples, 7, seed=3) == (rest, held) and split_off(examples, 7, seed=4) != (rest, held)


def test_sst2_style_phrases_hold_out_sentences_and_drop_their_parts_from_training():
    """Each sentence comes with its phrases (as SST-2's parse does): sentences are held out, never phrases,
    and no phrase of a held-out sentence (nor a repeat of it) stays in training; phrases of the other
    sentences do."""
    sentences = [f"the film s{i} was very good{i}" for i in range(20)]
    examples, i = [], 0
    for s in sentences:
        words = s.split()
        for phrase in (s, " ".join(words[1:3]), " ".join(words[2:]), words[-1]):
            examples.append(text(i, phrase))
            i += 1
    examples.append(text(i, sentences[0].upper()))  # a repeat (case differs): not whole, and never in training
    rest, held = split_off(examples, 5, seed=0)
    assert {e.text_a for e in held} <= set(sentences) and len(held) == 5
    inside = {" ".join(ws[a:b]) for h in held for ws in [h.text_a.split()] for a in range(len(ws))
              for b in range(a + 1, len(ws) + 1)}
    assert not any(e.text_a.lower() in inside for e in rest)
    kept = [s for s in sentences if s not in {e.text_a for e in held}]
    assert {e.text_a for e in rest} >= set(kept) and len(rest) == len(examples) - 5 - 3 * 5 - (
        sentences[0] in {e.text_a for e in held})
    # "the film" would be inside every sentence, but no example is "the film": nothing else leaves training


def test_parts_are_drawn_only_when_too_few_examples_are_whole():
    examples = [text(0, "a b c"), text(1, "a b"), text(2, "b c"), text(3, "d e f")]
    rest, held = split_off(examples, 3, seed=0)
    assert {e.guid for e in held} >= {"0", "3"} and len(held) == 3 and rest == []  # the third is a part of "a b c"


def test_pairs_tags_and_spans_have_their_words():
    assert example_words(text(0, "A b", "c")) == ("a", "b", "\x00", "c")
    assert example_words(TaggingExample(guid="0", tokens=("EU", "rejects"), tags=("B-ORG", "O"))) == ("eu", "rejects")
    assert example_words(SpanExample(qid="q", question="Who?", context="Me.")) == ("who?", "\x00", "me.")
    # a single text inside a pair's text is a part of the pair; a pair is never inside a single text
    examples = [text(0, "x y"), text(1, "w", "x y"), text(2, "z")]
    for seed in range(6):
        rest, held = split_off(examples, 2, seed=seed)
        assert [e.guid for e in held] == ["1", "2"] and rest == []  # "x y" is inside the pair: drawn last, left out


def test_holding_out_all_examples_or_more_is_refused():
    with pytest.raises(ValueError, match="cannot hold out 3 of 3"):
        split_off([text(i, f"w{i}") for i in range(3)], 3)
