"""The generic tasks on the user's own data (`tasks.userdata`): CSV, TSV, JSON lines, a saved dataset.

The data sets are a few rows of the shared SST-2, STS-B and CoNLL-2003 files rewritten as a user would
have them: they must read, encode and score exactly as the benchmark readers read the same rows. Every
bad input fails with one line naming the file and line (or the dataset split and row).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from task_data import CONLL, GLUE, needs_data

from tasks import metrics
from tasks.errors import DataError, UserError
from tasks.features import encode
from tasks.readers import data_files, load_task, read_split
from tasks.registry import get_task, saved_task, task_record
from tasks.userdata import DataSpec

pytestmark = needs_data


def write_csv(path, header, rows, delimiter=","):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def sst2_rows():
    task = get_task("sst2")
    return read_split(task, "train", GLUE / "SST-2", limit=40), read_split(task, "dev", GLUE / "SST-2", limit=17)


@pytest.fixture
def sst2_csv(tmp_path, sst2_rows):
    """An SST-2 slice as a user's CSV: columns review, sentiment (neg / pos)."""
    def rows(examples):
        return [[e.text_a, "pos" if e.label == "1" else "neg"] for e in examples]

    train, dev = sst2_rows
    write_csv(tmp_path / "train.csv", ["review", "sentiment"], rows(train))
    write_csv(tmp_path / "dev.csv", ["review", "sentiment"], rows(dev))
    return DataSpec(train_file=str(tmp_path / "train.csv"), dev_file=str(tmp_path / "dev.csv"),
                    text_column="review", label_column="sentiment")


def test_sst2_csv_reads_encodes_and_scores_as_the_glue_reader(sst2_csv, sst2_rows, tokenizer):
    task, folder = load_task("text-classification", None, sst2_csv)
    assert folder is None and task.labels == ("neg", "pos") and task.metric == "accuracy"
    assert task.text_columns == ("review",) and task.label_column == "sentiment"
    bench = get_task("sst2")
    dev = read_split(task, "dev")
    assert [e.text_a for e in dev] == [e.text_a for e in sst2_rows[1]]
    mine, theirs = encode(task, dev, tokenizer), encode(bench, sst2_rows[1], tokenizer)
    assert all(np.array_equal(a, b) for a, b in zip(mine.input_ids, theirs.input_ids))
    assert np.array_equal(mine.labels, theirs.labels)  # neg -> 0, pos -> 1, as '0' and '1'
    logits = np.random.default_rng(0).normal(size=(len(dev), 2))
    ours, glue = metrics.evaluate(task, mine, dev, logits), metrics.evaluate(bench, theirs, sst2_rows[1], logits)
    assert ours["accuracy"] == glue["accuracy"] and 0 < ours["accuracy"] < 1
    assert len(read_split(task, "train", limit=5)) == 5
    assert data_files(task, ("train", "dev")) == [Path(sst2_csv.train_file).resolve(), Path(sst2_csv.dev_file).resolve()]


def test_sst2_as_tsv_and_the_column_defaults(tmp_path, sst2_rows):
    rows = [[e.text_a, e.label] for e in sst2_rows[0]]
    write_csv(tmp_path / "train.tsv", ["text", "label"], rows, delimiter="\t")
    task, _ = load_task("Text_Classification", None, DataSpec(train_file=str(tmp_path / "train.tsv"),
                                                             dev_file=str(tmp_path / "train.tsv")))
    assert task.name == "text-classification" and task.labels == ("0", "1")
    assert [(e.text_a, e.label) for e in read_split(task, "dev")] == [(e.text_a, e.label) for e in sst2_rows[0]]


def test_stsb_jsonl_is_a_pair_regression_scored_as_the_glue_reader(tmp_path, tokenizer):
    train = read_split(get_task("stsb"), "train", GLUE / "STS-B", limit=30)
    write_jsonl(tmp_path / "sts.jsonl", [{"s1": e.text_a, "s2": e.text_b, "score": e.label} for e in train])
    spec = DataSpec(train_file=str(tmp_path / "sts.jsonl"), dev_file=str(tmp_path / "sts.jsonl"), text_column="s1",
                    text_pair_column="s2", label_column="score", max_seq_length=20)
    task, _ = load_task("text-regression", None, spec)
    assert task.kind == "regression" and task.labels == () and task.max_length == 20
    assert task.text_columns == ("s1", "s2")
    dev = read_split(task, "dev")
    assert [(e.text_a, e.text_b, e.label) for e in dev] == [(e.text_a, e.text_b, e.label) for e in train]
    bench, _ = load_task("stsb", GLUE / "STS-B", DataSpec(max_seq_length=20))
    mine, theirs = encode(task, dev, tokenizer), encode(bench, train, tokenizer)
    assert max(mine.lengths) == 20 > min(mine.lengths)  # --max-seq-length cuts the longest pairs
    assert all(np.array_equal(a, b) for a, b in zip(mine.input_ids, theirs.input_ids))
    assert all(np.array_equal(a, b) for a, b in zip(mine.token_type_ids, theirs.token_type_ids))
    scores = np.random.default_rng(1).normal(size=(len(dev), 1))
    ours, glue = metrics.evaluate(task, mine, dev, scores), metrics.evaluate(bench, theirs, train, scores)
    assert ours["pearson"] == pytest.approx(glue["pearson"]) and ours["spearmanr"] == pytest.approx(glue["spearmanr"])


def conll_dataset(path, limit=12):
    """A CoNLL-2003 slice saved as a DatasetDict, tags as ClassLabel ids (the layout of the Hub's conll2003)."""
    datasets = pytest.importorskip("datasets")
    bench = get_task("conll2003")
    features = datasets.Features({"tokens": datasets.List(datasets.Value("string")),
                                  "ner_tags": datasets.List(datasets.ClassLabel(names=list(bench.labels)))})

    def split(name):
        rows = read_split(bench, name, CONLL, limit=limit)
        ids = {t: i for i, t in enumerate(bench.labels)}
        return rows, datasets.Dataset.from_dict(
            {"tokens": [list(e.tokens) for e in rows], "ner_tags": [[ids[t] for t in e.tags] for e in rows]},
            features=features)

    (train, train_ds), (dev, dev_ds) = split("train"), split("dev")
    datasets.DatasetDict({"train": train_ds, "validation": dev_ds}).save_to_disk(str(path))
    return train, dev


def test_conll_saved_dataset_reads_as_the_conll_reader(tmp_path, tokenizer):
    _, dev_rows = conll_dataset(tmp_path / "conll")
    task, _ = load_task("token-classification", None, DataSpec(dataset=str(tmp_path / "conll"),
                                                              label_column="ner_tags"))
    bench = get_task("conll2003")
    assert task.labels == bench.labels and task.files == (("train", "train"), ("dev", "validation"))
    dev = read_split(task, "dev")
    assert [(e.tokens, e.tags) for e in dev] == [(e.tokens, e.tags) for e in dev_rows]
    mine, theirs = encode(task, dev, tokenizer), encode(bench, dev_rows, tokenizer)
    assert all(np.array_equal(a, b) for a, b in zip(mine.labels, theirs.labels))
    logits = np.random.default_rng(2).normal(size=(len(dev), max(mine.lengths), len(task.labels)))
    assert metrics.evaluate(task, mine, dev, logits) == metrics.evaluate(bench, theirs, dev_rows, logits)
    assert all(p.suffix == ".arrow" for p in data_files(task, ("train", "dev")))


def test_tags_from_text_columns_get_the_ner_order(tmp_path):
    write_csv(tmp_path / "t.csv", ["words", "tags"], [["Paris is big", "B-LOC O O"], ["Ann met Bo", "B-PER O B-PER"]])
    spec = DataSpec(train_file=str(tmp_path / "t.csv"), dev_file=str(tmp_path / "t.csv"), text_column="words")
    task, _ = load_task("token-classification", None, spec)
    assert task.labels == ("O", "B-LOC", "I-LOC", "B-PER", "I-PER")
    assert read_split(task, "dev")[1].tags == ("B-PER", "O", "B-PER")


def test_integer_labels_sort_as_numbers_and_json_types_are_kept(tmp_path):
    write_jsonl(tmp_path / "t.jsonl", [{"text": f"t{i}", "label": n} for i, n in enumerate([10, 2, 1, 2])])
    task, _ = load_task("text-classification", None, DataSpec(train_file=str(tmp_path / "t.jsonl"),
                                                             dev_file=str(tmp_path / "t.jsonl")))
    assert task.labels == ("1", "2", "10") and task.metric_names == ("accuracy", "matthews_corr")


def test_the_task_a_model_records_comes_back_with_its_columns(sst2_csv, tmp_path):
    task, _ = load_task("text-classification", None, sst2_csv)
    meta = {**task_record(task), "labels": list(task.labels)}
    assert meta == {"task": "text-classification", "max_length": 128, "text_columns": ["review"],
                    "label_column": "sentiment", "labels": ["neg", "pos"]}
    again = saved_task(meta, max_length=64)
    assert again.labels == task.labels and again.text_columns == ("review",) and again.max_length == 64
    assert again.files == ()
    with pytest.raises(UserError, match="no dev data; pass --dev-file"):
        read_split(again, "dev")


def test_test_split_may_be_unlabelled(tmp_path, sst2_csv):
    write_csv(tmp_path / "test.csv", ["review"], [["a fine film"], ["dull"]])
    task, _ = load_task("text-classification", None, DataSpec(**{**sst2_csv.__dict__, "test_file": str(tmp_path / "test.csv")}))
    assert [e.label for e in read_split(task, "test")] == [None, None]


def test_max_seq_length_applies_to_benchmark_tasks_and_the_generic_flags_do_not():
    task, _ = load_task("sst2", GLUE / "SST-2", DataSpec(max_seq_length=64))
    assert task.max_length == 64 and task.labels == ("0", "1")
    with pytest.raises(UserError, match="task sst2 reads its benchmark files from --data-dir"):
        load_task("sst2", GLUE / "SST-2", DataSpec(train_file="x.csv"))
    with pytest.raises(UserError, match="--max-seq-length: must be an integer >= 8"):
        DataSpec(max_seq_length=4)
    with pytest.raises(UserError, match="give one source of data"):
        DataSpec(train_file="a.csv", dataset="b")
    with pytest.raises(UserError, match="needs its training data: --train-file"):
        load_task("text-classification", None, DataSpec(dev_file="d.csv"))


# --- bad input: one DataError naming the file and the line (or the dataset split and row) ---------------------


def bad_input(tmp_path, name: str, text: str | bytes, *, task="text-classification", dev: str | None = None, **cols):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    spec = DataSpec(train_file=str(path), dev_file=str(tmp_path / dev) if dev else str(path), **cols)
    with pytest.raises(UserError) as info:
        task_, _ = load_task(task, None, spec)
        read_split(task_, "dev")
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_column_names_the_header_line(tmp_path):
    msg = bad_input(tmp_path, "a.csv", "review,label\ngood,pos\n", text_column="text")
    assert msg == f"{tmp_path / 'a.csv'}:1: missing column 'text'; the header has ['review', 'label']"
    msg = bad_input(tmp_path, "b.jsonl", '{"text": "x", "label": "a"}\n{"text": "y"}\n')
    assert msg.startswith(f"{tmp_path / 'b.jsonl'}:2: missing column 'label'")


def test_empty_label_names_the_row(tmp_path):
    msg = bad_input(tmp_path, "a.csv", "text,label\ngood,pos\nbad,\nok,neg\n")
    assert msg == f"{tmp_path / 'a.csv'}:3: empty label in column 'label'"
    msg = bad_input(tmp_path, "b.jsonl", '{"text": "x", "label": "a"}\n\n{"text": "y", "label": null}\n')
    assert msg == f"{tmp_path / 'b.jsonl'}:3: empty label in column 'label'"


def test_dev_label_unknown_to_train_names_the_dev_row(tmp_path):
    (tmp_path / "dev.csv").write_text("text,label\nfine,pos\nso so,meh\n")
    msg = bad_input(tmp_path, "train.csv", "text,label\ngood,pos\nbad,neg\n", dev="dev.csv")
    assert msg == f"{tmp_path / 'dev.csv'}:3: label 'meh' is not one of the training data's labels ['neg', 'pos']"


def test_non_numeric_regression_target(tmp_path):
    msg = bad_input(tmp_path, "a.jsonl", '{"text": "x", "label": 1.5}\n{"text": "y", "label": "high"}\n',
                    task="text-regression")
    assert msg == f"{tmp_path / 'a.jsonl'}:2: column 'label' holds text here but a number at line 1 (mixed types)"
    msg = bad_input(tmp_path, "b.csv", "text,label\nx,1.5\ny,high\n", task="text-regression")
    assert msg == f"{tmp_path / 'b.csv'}:3: regression target 'high' in column 'label' is not a number"
    msg = bad_input(tmp_path, "c.csv", "text,label\nx,nan\n", task="text-regression")
    assert msg.endswith(":2: regression target 'nan' in column 'label' is not a finite number")


def test_mixed_types_in_a_column(tmp_path):
    msg = bad_input(tmp_path, "a.jsonl", '{"text": "x", "label": 1}\n{"text": "y", "label": 0}\n'
                    '{"text": "z", "label": "pos"}\n')
    assert msg == f"{tmp_path / 'a.jsonl'}:3: column 'label' holds text here but a number at line 1 (mixed types)"
    msg = bad_input(tmp_path, "b.jsonl", '{"text": 3, "label": "a"}\n')
    assert msg == f"{tmp_path / 'b.jsonl'}:1: column 'text' must hold text, found a number"


def test_a_file_with_no_rows(tmp_path):
    assert bad_input(tmp_path, "a.csv", "text,label\n") == f"{tmp_path / 'a.csv'}: no rows (only a header)"
    assert bad_input(tmp_path, "b.csv", "") == f"{tmp_path / 'b.csv'}: file is empty"
    assert bad_input(tmp_path, "c.jsonl", "\n\n") == f"{tmp_path / 'c.jsonl'}: no rows"


def test_an_unreadable_encoding(tmp_path):
    msg = bad_input(tmp_path, "a.csv", "text,label\ngood,pos\n".encode() + "café,neg\n".encode("latin-1"))
    assert msg.startswith(f"{tmp_path / 'a.csv'}: not UTF-8 text at line 3")


def test_unknown_extension_and_missing_file(tmp_path):
    msg = bad_input(tmp_path, "a.xlsx", "text,label\n")
    assert msg == (f"{tmp_path / 'a.xlsx'}: unknown file type '.xlsx'; expected a .csv, .tsv, .jsonl or .json "
                   "(JSON lines) file")
    spec = DataSpec(train_file=str(tmp_path / "nope.csv"), dev_file=str(tmp_path / "nope.csv"))
    with pytest.raises(DataError, match="nope.csv: file not found"):
        load_task("text-classification", None, spec)


def test_malformed_rows(tmp_path):
    assert bad_input(tmp_path, "a.csv", "text,label\ngood,pos,extra\n") == (
        f"{tmp_path / 'a.csv'}:2: expected 2 CSV fields (as the header has), found 3")
    assert bad_input(tmp_path, "b.jsonl", '{"text": "x", "label": "a"}\n[1, 2]\n') == (
        f"{tmp_path / 'b.jsonl'}:2: expected one JSON object per line, got a list")
    assert bad_input(tmp_path, "c.jsonl", '{"text": "x",\n').startswith(f"{tmp_path / 'c.jsonl'}:1: malformed JSON")
    assert bad_input(tmp_path, "d.csv", "text,label\nx,a\n") == (
        f"{tmp_path / 'd.csv'}: column 'label' has the one label ['a']; a classifier needs at least two")


def test_bad_tags(tmp_path):
    msg = bad_input(tmp_path, "a.jsonl", '{"tokens": ["a", "b"], "tags": ["O"]}\n', task="token-classification")
    assert msg == f"{tmp_path / 'a.jsonl'}:1: 2 words in column 'tokens' but 1 tags in 'tags'"
    msg = bad_input(tmp_path, "b.jsonl", '{"tokens": ["a", "b"], "tags": ["O", "S-PER"]}\n',
                    task="token-classification")
    assert msg.startswith(f"{tmp_path / 'b.jsonl'}:1: tag 'S-PER' is not IOB2 (O, B-X or I-X)")
    msg = bad_input(tmp_path, "c.csv", "tokens,tags\nA b,B-X I-X\nc d,O I-X\n", task="token-classification")
    assert msg == f"{tmp_path / 'c.csv'}:3: tag I-X (word 2) follows O: not IOB2 (IOB1 data must be converted)"


def test_dataset_errors(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as info:
        load_task("token-classification", None, DataSpec(dataset=str(tmp_path / "empty")))
    assert str(info.value) == (f"{tmp_path / 'empty'}: not a dataset saved with save_to_disk (no dataset_dict.json "
                               "or state.json)")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError) as info:
        load_task("text-classification", None, DataSpec(dataset="no-such-user/no-such-set:cfg"))
    assert str(info.value).startswith("--dataset no-such-user/no-such-set:cfg: not a saved dataset directory, and "
                                      "not found in the datasets cache") and "\n" not in str(info.value)
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(
        {"tokens": [["a"], ["b", "c"]], "tags": [["O"], ["B-X"]]})}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(DataError) as info:
        load_task("token-classification", None, DataSpec(dataset=str(tmp_path / "ds")))
    assert str(info.value) == f"{tmp_path / 'ds'} (train split): row 1: 2 words in column 'tokens' but 1 tags in 'tags'"
