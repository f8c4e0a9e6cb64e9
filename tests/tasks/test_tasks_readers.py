"""Readers on the real dev data and on broken inline files."""

from __future__ import annotations

import json

import pytest
from task_data import CONLL, GLUE, needs_data

from tasks.base import SpanExample, TaggingExample, TextExample
from tasks.errors import DataError, UserError
from tasks.readers import read_split, resolve_data_dir
from tasks.registry import get_task

SST2, STSB, CONLL_TASK, SQUAD = (get_task(n) for n in ("sst2", "stsb", "conll2003", "squad"))


# --- the real files ---------------------------------------------------------


@needs_data
def test_sst2_dev():
    examples = read_split(SST2, "dev", GLUE / "SST-2")
    assert len(examples) == 872
    assert all(isinstance(e, TextExample) and e.text_b is None for e in examples)
    assert sum(e.label == "1" for e in examples) == 444
    assert sum(e.label == "0" for e in examples) == 428
    assert examples[0].text_a == "one long string of cliches ."


@needs_data
def test_sst2_train_limit():
    examples = read_split(SST2, "train", GLUE / "SST-2", limit=100)
    assert len(examples) == 100
    assert examples[-1].guid == "train-99"


@needs_data
def test_stsb_dev_keeps_quotes():
    examples = read_split(STSB, "dev", GLUE / "STS-B")
    assert len(examples) == 1500
    assert all(isinstance(e.label, float) and 0.0 <= e.label <= 5.0 for e in examples)
    assert examples[0].label == 5.0 and examples[0].text_b == "A man wearing a hard hat is dancing."
    quoted = [e for e in examples if '"' in e.text_a + e.text_b]
    assert quoted  # quoting disabled: quotes stay part of the text


@needs_data
def test_conll_dev():
    examples = read_split(CONLL_TASK, "dev", CONLL)
    assert len(examples) == 3250
    assert all(isinstance(e, TaggingExample) and len(e.tokens) == len(e.tags) for e in examples)
    assert examples[0].tokens[2] == "LEICESTERSHIRE" and examples[0].tags[2] == "B-ORG"
    assert len(read_split(CONLL_TASK, "train", CONLL, limit=7)) == 7


# --- inline GLUE TSVs --------------------------------------------------------


def test_missing_file_has_hint(tmp_path):
    with pytest.raises(DataError) as err:
        read_split(SST2, "dev", tmp_path)
    message = str(err.value)
    assert str(tmp_path / "dev.tsv") in message
    assert "file not found" in message and "gluebenchmark.com" in message


def test_empty_file(write):
    path = write("dev.tsv", "")
    with pytest.raises(DataError, match="dev.tsv: file is empty"):
        read_split(SST2, "dev", path.parent)


def test_header_only_file(write):
    path = write("dev.tsv", "sentence\tlabel\n")
    with pytest.raises(DataError, match="dev.tsv: no examples"):
        read_split(SST2, "dev", path.parent)


def test_short_row_names_file_and_line(write):
    path = write("dev.tsv", "sentence\tlabel\ngood film\t1\nno label here\n")
    with pytest.raises(DataError) as err:
        read_split(SST2, "dev", path.parent)
    assert str(err.value).startswith(f"{path}:3: ")
    assert err.value.line == 3 and "fields" in str(err.value)


def test_missing_column(write):
    path = write("dev.tsv", "text\tlabel\ngood film\t1\n")
    with pytest.raises(DataError) as err:
        read_split(SST2, "dev", path.parent)
    assert "dev.tsv" in str(err.value) and "'sentence'" in str(err.value)


def test_missing_label_column_allowed_for_test_split(write):
    path = write("test.tsv", "index\tsentence\n0\tgood film\n1\tbad film\n")
    examples = read_split(SST2, "test", path.parent)
    assert [e.label for e in examples] == [None, None]
    assert examples[1].text_a == "bad film"
    dev = write("dev.tsv", "index\tsentence\n0\tgood film\n")
    with pytest.raises(DataError, match="dev.tsv:1: missing column 'label'"):
        read_split(SST2, "dev", dev.parent)


def test_label_outside_task_labels(write):
    path = write("dev.tsv", "sentence\tlabel\ngood\t1\nbad\t2\n")
    with pytest.raises(DataError) as err:
        read_split(SST2, "dev", path.parent)
    message = str(err.value)
    assert f"{path}:3:" in message and "'2'" in message and "['0', '1']" in message


def test_non_numeric_stsb_score(write):
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    row = "0\tmain\tMSRvid\t2012\t0\tnone\tnone\tA \"man\".\tA man.\t{}\n"
    path = write("dev.tsv", header + row.format("4.5") + row.format("high"))
    with pytest.raises(DataError, match=r"dev.tsv:3: score 'high' is not a number"):
        read_split(STSB, "dev", path.parent)
    write("dev.tsv", header + row.format("7.0"))
    with pytest.raises(DataError, match=r"dev.tsv:2: score 7.0 is outside \[0.0, 5.0\]"):
        read_split(STSB, "dev", path.parent)
    write("dev.tsv", header + row.format("4.5"))
    (only,) = read_split(STSB, "dev", path.parent)
    assert only.text_a == 'A "man".' and only.label == 4.5


def test_cola_headerless_and_test_with_header(write):
    path = write("train.tsv", "gj04\t1\t\tThe boy ran.\ngj04\t0\t*\tRan boy the.\n")
    examples = read_split(get_task("cola"), "train", path.parent)
    assert [(e.text_a, e.label) for e in examples] == [("The boy ran.", "1"), ("Ran boy the.", "0")]
    write("test.tsv", "index\tsentence\n0\tThe boy ran.\n")
    (test,) = read_split(get_task("cola"), "test", path.parent)
    assert test.text_a == "The boy ran." and test.label is None


def test_mrpc_header_with_byte_order_mark(write):
    text = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tA cat.\tThe cat.\n"
    path = write("train.tsv", text)
    (example,) = read_split(get_task("mrpc"), "train", path.parent)
    assert (example.text_a, example.text_b, example.label) == ("A cat.", "The cat.", "1")


# --- CoNLL -------------------------------------------------------------------


def test_conll_formats(write):
    text = (
        "-DOCSTART- -X- -X- O\n\n"
        "EU NNP B-NP B-ORG\nrejects VBZ B-VP O\nGerman JJ B-NP B-MISC\n\n"
        "Peter NNP B-PER\nBlackburn NNP I-PER\n"
    )
    path = write("train.txt", text)
    first, second = read_split(CONLL_TASK, "train", path.parent)
    assert first.tokens == ("EU", "rejects", "German") and first.tags == ("B-ORG", "O", "B-MISC")
    assert second.tags == ("B-PER", "I-PER")


def test_conll_wrong_field_count(write):
    path = write("dev.txt", "EU NNP B-ORG\nrejects O\n")
    with pytest.raises(DataError) as err:
        read_split(CONLL_TASK, "dev", path.parent)
    assert str(err.value).startswith(f"{path}:2: expected 3 fields")


def test_conll_unknown_tag_and_iob1(write):
    path = write("dev.txt", "EU NNP B-ORG\nrejects VBZ B-VERB\n")
    with pytest.raises(DataError, match=r"dev.txt:2: unknown tag 'B-VERB'"):
        read_split(CONLL_TASK, "dev", path.parent)
    write("dev.txt", "EU NNP O\nPeter NNP I-PER\n")
    with pytest.raises(DataError, match=r"dev.txt:2: tag I-PER follows O: not IOB2"):
        read_split(CONLL_TASK, "dev", path.parent)


# --- SQuAD -------------------------------------------------------------------


def _squad(context: str, answers: list[tuple[str, int]]) -> str:
    qas = [{"id": "q1", "question": "Who?", "answers": [{"text": t, "answer_start": s} for t, s in answers]}]
    return json.dumps({"version": "1.1", "data": [{"title": "T", "paragraphs": [{"context": context, "qas": qas}]}]})


def test_squad_reads(write):
    path = write("dev-v1.1.json", _squad("Ada Lovelace wrote it.", [("Ada Lovelace", 0), ("Lovelace", 4)]))
    (example,) = read_split(SQUAD, "dev", path.parent)
    assert isinstance(example, SpanExample)
    assert example.qid == "q1" and example.answers == (("Ada Lovelace", 0), ("Lovelace", 4))


def test_squad_answer_must_match_context(write):
    path = write("dev-v1.1.json", _squad("Ada Lovelace wrote it.", [("Lovelace", 3)]))
    with pytest.raises(DataError) as err:
        read_split(SQUAD, "dev", path.parent)
    assert "dev-v1.1.json" in str(err.value) and "question q1" in str(err.value)


def test_squad_malformed_json(write):
    path = write("dev-v1.1.json", '{"data": [\n  {"title": "T",\n  "paragraphs": [}\n]}')
    with pytest.raises(DataError) as err:
        read_split(SQUAD, "dev", path.parent)
    assert str(err.value).startswith(f"{path}:3: malformed JSON")


def test_squad_wrong_structure(write):
    path = write("dev-v1.1.json", json.dumps({"data": [{"paragraphs": [{"qas": []}]}]}))
    with pytest.raises(DataError, match="paragraphs.0.*'context'"):
        read_split(SQUAD, "dev", path.parent)


# --- data-dir resolution -----------------------------------------------------


def test_resolution_order(tmp_path, monkeypatch):
    explicit = tmp_path / "mine"
    explicit.mkdir()
    (tmp_path / "glue" / "SST-2").mkdir(parents=True)
    monkeypatch.setenv("GLUE_DIR", str(tmp_path / "glue"))
    assert resolve_data_dir(SST2, explicit) == explicit
    assert resolve_data_dir(SST2, None) == tmp_path / "glue" / "SST-2"
    with pytest.raises(UserError, match="does not exist"):
        resolve_data_dir(SST2, tmp_path / "nowhere")
    monkeypatch.delenv("GLUE_DIR")
    with pytest.raises(UserError) as err:
        resolve_data_dir(SST2, None)
    assert "GLUE_DIR" in str(err.value) and "--data-dir" in str(err.value)
    assert "https://gluebenchmark.com/tasks" in str(err.value)


def test_env_var_pointing_nowhere(tmp_path, monkeypatch):
    monkeypatch.setenv("GLUE_DIR", str(tmp_path))
    with pytest.raises(UserError, match="GLUE_DIR.*STS-B does not exist"):
        resolve_data_dir(STSB, None)


def test_conll_and_squad_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("CONLL_DIR", raising=False)
    monkeypatch.delenv("SQUAD_DIR", raising=False)
    (tmp_path / "glue").mkdir()
    (tmp_path / "conll2003").mkdir()
    monkeypatch.setenv("GLUE_DIR", str(tmp_path / "glue"))
    assert resolve_data_dir(CONLL_TASK) == tmp_path / "conll2003"
    monkeypatch.setenv("CONLL_DIR", str(tmp_path / "glue"))
    assert resolve_data_dir(CONLL_TASK) == tmp_path / "glue"
    with pytest.raises(UserError, match="SQUAD_DIR.*rajpurkar.github.io/SQuAD-explorer"):
        resolve_data_dir(SQUAD)
    monkeypatch.setenv("SQUAD_DIR", str(tmp_path))
    assert resolve_data_dir(SQUAD) == tmp_path


def test_read_split_uses_env(tmp_path, monkeypatch, write):
    write("glue/SST-2/dev.tsv", "sentence\tlabel\nfine\t1\n")
    monkeypatch.setenv("GLUE_DIR", str(tmp_path / "glue"))
    assert [e.text_a for e in read_split(SST2, "dev")] == ["fine"]


def test_parent_directory_hint(tmp_path, write):
    write("SST-2/dev.tsv", "sentence\tlabel\nfine\t1\n")
    with pytest.raises(DataError, match=r"did you mean the directory .*SST-2"):
        read_split(SST2, "dev", tmp_path)
