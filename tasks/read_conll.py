"""CoNLL-format readers: one `TaggingExample` per sentence.

CoNLL-2003 (reader 'conll'): each line is `token POS chunk tag` (4 fields,
the original release) or `token POS tag` (3 fields). The generic NER format
(reader 'ner') also takes `token tag` (2 fields): the usual layout of Chinese
character-level NER data, one character and its tag per line. The tag is the
last field. A blank line ends a sentence and `-DOCSTART-` lines are skipped.
Tags must be IOB2 from the task's tag set: an `I-X` must follow `B-X` or
`I-X`. Files in IOB1 (the original 2003 release) are rejected with a hint
rather than guessed at. `read_tag_set` collects a file's tags, from which the
generic task takes its label set (`tasks.registry.tagging_task`).
"""

from __future__ import annotations

from pathlib import Path

from tasks.base import TaggingExample, Task
from tasks.datafiles import numbered_lines
from tasks.errors import DataError

FIELDS = {"conll": (3, 4), "ner": (2, 3, 4)}
"""Fields a token line may have, by reader."""
_LAYOUT = {2: "token tag", 3: "token POS tag", 4: "token POS chunk tag"}


def _bad_count(counts: tuple[int, ...], found: int) -> str:
    """'expected 3 fields (token POS tag) or 4 (token POS chunk tag), found 2'."""
    first, *rest = [f"{n} ({_LAYOUT[n]})" for n in counts]
    first = first.replace(" (", " fields (", 1)
    expected = first if not rest else ", ".join([first] + rest[:-1]) + f" or {rest[-1]}"
    return f"expected {expected}, found {found}"


def read_conll(task: Task, split: str, path: Path, limit: int | None = None) -> list[TaggingExample]:
    """Sentences of `path` (at most `limit`); DataError on a bad line or tag."""
    valid = set(task.labels)
    counts = FIELDS[task.reader]
    examples: list[TaggingExample] = []
    tokens: list[str] = []
    tags: list[str] = []

    def flush():
        if tokens:
            examples.append(TaggingExample(f"{split}-{len(examples)}", tuple(tokens), tuple(tags)))
            tokens.clear()
            tags.clear()

    for number, line in numbered_lines(path):
        if limit is not None and len(examples) >= limit:
            break
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            flush()
            continue
        if len(fields) not in counts:
            raise DataError(path, _bad_count(counts, len(fields)), line=number)
        tag = fields[-1]
        if tag not in valid:
            raise DataError(
                path, f"unknown tag {tag!r}; the {task.name} tags are {list(task.labels)}", line=number
            )
        if tag.startswith("I-") and (not tags or tags[-1][2:] != tag[2:]):
            after = tags[-1] if tags else "the sentence start"
            raise DataError(
                path,
                f"tag {tag} follows {after}: not IOB2 (IOB1 files must be converted to IOB2)",
                line=number,
            )
        tokens.append(fields[0])
        tags.append(tag)
    if limit is None or len(examples) < limit:
        flush()
    if not examples and limit != 0:
        raise DataError(path, "no sentences in the file")
    return examples


def read_tag_set(path: Path, reader: str = "ner") -> tuple[str, ...]:
    """The IOB2 tag set of a CoNLL-format file, in label-id order: 'O', then B-X, I-X for each entity
    type X in sorted order (both, even when the file has only one of them); DataError on a bad line
    or a tag that is not IOB2."""
    tags: set[str] = set()
    counts = FIELDS[reader]
    for number, line in numbered_lines(path):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            continue
        if len(fields) not in counts:
            raise DataError(path, _bad_count(counts, len(fields)), line=number)
        problem = iob2_tag_problem(fields[-1])
        if problem:
            raise DataError(path, problem, line=number)
        tags.add(fields[-1])
    tag_set = iob2_tag_set(tags)
    if tag_set is None:
        raise DataError(path, "no entity tags (B-X / I-X) in the file")
    return tag_set


def iob2_tag_problem(tag: str) -> str | None:
    """Why `tag` is not an IOB2 tag (O, B-X or I-X), or None when it is one."""
    if tag == "O":
        return None
    prefix, _, kind = tag.partition("-")
    if prefix not in ("B", "I") or not kind:
        hint = " (BIOES/BMES tags must be converted to BIO first)" if prefix in ("E", "S", "M") else ""
        return f"tag {tag!r} is not IOB2 (O, B-X or I-X){hint}"
    return None


def iob2_tag_set(tags) -> tuple[str, ...] | None:
    """The IOB2 tag set over the (valid) `tags` seen, in label-id order: 'O', then B-X and I-X for each entity
    type X in sorted order (both, even when only one was seen); None when there is no entity tag."""
    kinds = sorted({t.partition("-")[2] for t in tags if t != "O"})
    return ("O",) + tuple(f"{p}-{k}" for k in kinds for p in ("B", "I")) if kinds else None
