"""Task data files that are not what they claim: one DataError naming the file (and line), never a traceback.

Undecodable bytes, a binary file, a 50 MB line, a TSV field over the csv module's limit, JSON nested
100000 levels deep (Python's parser raises RecursionError there), a number too long to convert, the
wrong JSON shape.
"""

from __future__ import annotations

import json
import time

import pytest

from tasks.errors import DataError
from tasks.read_conll import read_tag_set
from tasks.readers import read_split
from tasks.registry import get_task
from tasks.userfiles import MAX_LINE_BYTES, read_json, text_lines

SST2, CONLL, SQUAD = (get_task(n) for n in ("sst2", "conll2003", "squad"))


def _bytes(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _error(task, path) -> str:
    split = "dev" if path.name.startswith("dev") else "train"
    with pytest.raises(DataError) as err:
        read_split(task, split, path.parent)
    return str(err.value)


def test_tsv_not_utf8_names_the_line(tmp_path):
    path = _bytes(tmp_path, "train.tsv", b"sentence\tlabel\na fun movie\t1\na \xff\xfe movie\t0\n")
    assert _error(SST2, path).startswith(f"{path}: not UTF-8 text at line 3")


def test_tsv_binary_file(tmp_path):
    path = _bytes(tmp_path, "train.tsv", b"sentence\tlabel\n\x00\x01\x02\x03\t1\n")
    assert _error(SST2, path).startswith(f"{path}: binary data (a NUL byte) at line 2")


def test_tsv_with_a_50mb_line_is_refused_quickly(tmp_path):
    path = _bytes(tmp_path, "train.tsv", b"sentence\tlabel\na fun movie\t1\n" + b"x" * (50 << 20) + b"\t1\n")
    start = time.perf_counter()
    message = _error(SST2, path)
    assert message.startswith(f"{path}:3: line longer than {MAX_LINE_BYTES} bytes")
    assert time.perf_counter() - start < 5


def test_tsv_field_over_the_csv_limit_names_the_line(tmp_path):
    path = _bytes(tmp_path, "train.tsv", b"sentence\tlabel\na fun movie\t1\n" + b"y" * 200_000 + b"\t1\n")
    message = _error(SST2, path)
    assert message.startswith(f"{path}:3: malformed TSV row") and "field larger than field limit" in message


def test_tsv_line_numbers_count_lone_carriage_returns(tmp_path):
    path = _bytes(tmp_path, "train.tsv", b"sentence\tlabel\ra fun movie\t1\r\na dull movie\t7\n")
    assert _error(SST2, path).startswith(f"{path}:3: label '7'")


def test_conll_not_utf8_and_overlong(tmp_path):
    path = _bytes(tmp_path, "train.txt", b"Paris NNP B-LOC\n\nRome NNP \xc3\x28\n")
    assert _error(CONLL, path).startswith(f"{path}: not UTF-8 text at line 3")
    path.write_bytes(b"Paris NNP B-LOC\n" + b"z" * (MAX_LINE_BYTES + 5))
    assert _error(CONLL, path).startswith(f"{path}:2: line longer than")


def test_ner_tag_set_of_a_binary_file(tmp_path):
    path = _bytes(tmp_path, "train.txt", bytes(range(256)) * 4)
    with pytest.raises(DataError) as err:
        read_tag_set(path)
    assert str(err.value).startswith(f"{path}: ")


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"[" * 100_000 + b"]" * 100_000, "malformed JSON: nested too deeply"),
        (b'{"data": [\n' + b"1" * 5001 + b"]}", "malformed JSON: Exceeds the limit"),
        (b'{"data": []}\n\xff', "not UTF-8 text at line 2"),
        (b"[1, 2, 3]", "the top level: expected a list under 'data'"),
        (b"", "file is empty"),
        (b"\x00" * 64, "binary data (a NUL byte) at line 1"),
    ],
    ids=["nested_100000_deep", "huge_integer", "not_utf8", "a_list", "empty", "binary"],
)
def test_squad_malformed_json_files(tmp_path, data, expected):
    path = _bytes(tmp_path, "dev-v1.1.json", data)
    assert _error(SQUAD, path).startswith(f"{path}: {expected}")


def test_squad_answers_not_a_list(tmp_path):
    doc = {"data": [{"paragraphs": [{"context": "Ada wrote it.", "qas": [{"id": "q1", "question": "Who?",
                                                                          "answers": 5}]}]}]}
    path = _bytes(tmp_path, "dev-v1.1.json", json.dumps(doc).encode())
    assert _error(SQUAD, path).startswith(f"{path}: question q1: expected a list under 'answers'")


def test_read_json_wants_an_object_when_told_what(tmp_path):
    path = _bytes(tmp_path, "config.json", b"[]")
    with pytest.raises(DataError, match=r"config.json: expected a JSON object \(a BERT config\), got a list"):
        read_json(path, "a BERT config")
    with pytest.raises(DataError, match="cannot read"):
        read_json(tmp_path / "missing.json")
    with pytest.raises(DataError, match="cannot read"):
        list(text_lines(tmp_path))  # a directory


def test_text_lines_keep_a_bom_free_first_line(tmp_path):
    path = _bytes(tmp_path, "in.txt", "\ufeffone\r\ntwo\rthree".encode())
    assert list(text_lines(path)) == [(1, "one"), (2, "two"), (3, "three")]
