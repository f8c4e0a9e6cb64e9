"""`--student FILE` that is not a student architecture: one UserError naming the file, never a traceback."""

from __future__ import annotations

import json

import pytest

from distill.arch import BertArch, resolve_student
from tasks.errors import UserError

TEACHER = BertArch.uniform(2, 36, 3, 37, vocab_size=101, max_position_embeddings=16)
GOOD = {"num_layers": 1, "hidden_size": 36, "head_size": 12, "num_heads": [3], "ffn_sizes": [19]}


@pytest.mark.parametrize(
    "data, expected",
    [
        (b'{"num_layers": 1,\n "x": "\xc3\x28"}', "not UTF-8 text at line 2"),
        (b"\x00" * 32, "binary data (a NUL byte) at line 1"),
        (b"[" * 100_000 + b"]" * 100_000, "malformed JSON: nested too deeply"),
        (b"[1, 2]", "expected a JSON object (a student architecture), got a list"),
        (b'{"num_layers": 2,', "not valid JSON at line 1"),
        (json.dumps({**GOOD, "num_layers": True}).encode(), "num_layers: must be an integer"),
        (json.dumps({**GOOD, "num_heads": ["x"]}).encode(), "num_heads: layer 0: must be an integer"),
        (json.dumps({**GOOD, "hidden_size": -3}).encode(), "hidden_size: must be an integer"),
        (json.dumps({**GOOD, "vocab_size": 1e9}).encode(), "vocab_size: must be an integer"),
        (json.dumps({**GOOD, "hidden_dropout": "0.1"}).encode(), "hidden_dropout: must be a number"),
        (json.dumps({"model_type": "bert", "num_hidden_layers": 1}).encode(), "not a student architecture"),
    ],
    ids=["not_utf8", "binary", "nested", "a_list", "syntax", "bool_layers", "string_heads", "negative_hidden",
         "vocab_1e9", "string_dropout", "hf_config_missing_fields"],
)
def test_malformed_student_file(tmp_path, data, expected):
    path = tmp_path / "student.json"
    path.write_bytes(data)
    with pytest.raises(UserError) as err:
        resolve_student(str(path), TEACHER)
    message = str(err.value)
    assert message.startswith(str(path)) and expected in message and "\n" not in message, message


def test_a_good_student_file_still_reads(tmp_path):
    path = tmp_path / "student.json"
    path.write_text(json.dumps(GOOD))
    assert resolve_student(str(path), TEACHER).ffn_sizes == (19,)
