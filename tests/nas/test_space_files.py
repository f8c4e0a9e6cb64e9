"""Search-space files that are not text, not JSON/YAML or nested beyond the parser: one SpaceError naming the file."""

from __future__ import annotations

import pytest

from nas.space import SearchSpace, SpaceError


@pytest.mark.parametrize(
    "name, data, expected",
    [
        ("space.json", b'{"layers": [1, 2],\n "name": "\xff"}', "not UTF-8 text at line 2"),
        ("space.yaml", b"layers: [1, 2]\n\x00\x00\n", "binary data (a NUL byte) at line 2"),
        ("space.json", b"[" * 100_000 + b"]" * 100_000, "malformed JSON: nested too deeply"),
        ("space.yaml", b"[" * 100_000 + b"]" * 100_000, "malformed YAML: nested too deeply"),
        ("space.json", b'{"layers": [' + b"7" * 5000 + b"]}", "malformed JSON: Exceeds the limit"),
        ("space.json", b"[1, 2]", "expected a mapping of search space fields, got list"),
        ("space.json", b"", "file is empty"),
    ],
    ids=["json_not_utf8", "yaml_binary", "json_nested", "yaml_nested", "json_huge_integer", "json_list", "empty"],
)
def test_malformed_space_file(tmp_path, name, data, expected):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(SpaceError) as err:
        SearchSpace.from_file(path)
    message = str(err.value)
    assert message.startswith(str(path)) and expected in message and "\n" not in message, message
