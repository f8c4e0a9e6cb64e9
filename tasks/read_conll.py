"""CoNLL-2003 reader: one `TaggingExample` per sentence.

Each line is `token POS chunk tag` (4 fields, the original release) or
`token POS tag` (3 fields); the tag is the last field. A blank line ends a
sentence and `-DOCSTART-` lines are skipped. Tags must be IOB2 from the
task's tag set: an `I-X` must follow `B-X` or `I-X`. Files in IOB1 (the
original 2003 release) are rejected with a hint rather than guessed at.
"""

from __future__ import annotations

from pathlib import Path

from tasks.base import TaggingExample, Task
from tasks.datafiles import numbered_lines
from tasks.errors import DataError


def read_conll(task: Task, split: str, path: Path, limit: int | None = None) -> list[TaggingExample]:
    """Sentences of `path` (at most `limit`); DataError on a bad line or tag."""
    valid = set(task.labels)
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
        if len(fields) not in (3, 4):
            raise DataError(
                path,
                f"expected 3 fields (token POS tag) or 4 (token POS chunk tag), found {len(fields)}",
                line=number,
            )
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
