"""SQuAD v1.1 reader: one `SpanExample` per question.

The file is `{"data": [{"paragraphs": [{"context", "qas": [{"id", "question",
"answers": [{"text", "answer_start"}]}]}]}]}`. Every answer must be the
context text at `answer_start`; SQuAD v2 unanswerable questions are refused.
Questions without answers are kept (answers ()) for prediction-only files.
"""

from __future__ import annotations

from pathlib import Path

from tasks.base import SpanExample, Task
from tasks.errors import DataError
from tasks.userfiles import read_json


def read_squad(task: Task, split: str, path: Path, limit: int | None = None) -> list[SpanExample]:
    """Questions of `path` (at most `limit`); DataError on bad JSON or answers."""
    doc = read_json(path, max_bytes=None)  # one-line errors: bad UTF-8, syntax, nesting

    examples: list[SpanExample] = []
    for a, article in enumerate(_list(doc, "data", path, "the top level")):
        for p, para in enumerate(_list(article, "paragraphs", path, f"data[{a}]")):
            where = f"data[{a}].paragraphs[{p}]"
            context = _str(para, "context", path, where)
            for q, qa in enumerate(_list(para, "qas", path, where)):
                if limit is not None and len(examples) >= limit:
                    return examples
                examples.append(_example(qa, context, path, f"{where}.qas[{q}]"))
    if not examples and limit != 0:
        raise DataError(path, "no questions in the file")
    return examples


def _example(qa, context: str, path: Path, where: str) -> SpanExample:
    qid = _str(qa, "id", path, where)
    question = _str(qa, "question", path, f"question {qid}")
    if qa.get("is_impossible"):
        raise DataError(path, f"question {qid} is unanswerable (SQuAD v2); only v1.1 is supported")
    raw_answers = qa.get("answers", [])
    if not isinstance(raw_answers, list):
        raise DataError(path, f"question {qid}: expected a list under 'answers', got {raw_answers!r:.40}")
    answers = []
    for ans in raw_answers:
        if not isinstance(ans, dict) or not isinstance(ans.get("text"), str):
            raise DataError(path, f"question {qid}: an answer lacks a 'text' string")
        start = ans.get("answer_start")
        if not isinstance(start, int) or isinstance(start, bool):
            raise DataError(path, f"question {qid}: answer_start must be an integer, got {start!r}")
        found = context[start : start + len(ans["text"])] if start >= 0 else None
        if found != ans["text"]:
            raise DataError(
                path,
                f"question {qid}: answer {ans['text']!r} does not match the context at "
                f"{start} ({found!r})",
            )
        answers.append((ans["text"], start))
    return SpanExample(qid=qid, question=question, context=context, answers=tuple(answers))


def _list(obj, key: str, path: Path, where: str) -> list:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, list):
        raise DataError(path, f"{where}: expected a list under {key!r}")
    return value


def _str(obj, key: str, path: Path, where: str) -> str:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, str):
        raise DataError(path, f"{where}: expected a string under {key!r}")
    return value
