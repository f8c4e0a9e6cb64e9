"""The generic `ner` task: tag set from the data, `token tag` lines, Chinese character tokenisation.

The tokenizer is a BertTokenizerFast built, as transformers builds a Chinese
BERT's, from nothing but a vocab.txt ([PAD] [UNK] [CLS] [SEP] [MASK] and some
CJK characters) next to a plain BERT config.json.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import CJK_VOCAB, chinese_ner_sentences, write_chinese_ner, write_vocab

from tasks.base import TaggingExample
from tasks.errors import DataError, UserError
from tasks.features import IGNORE, encode
from tasks.read_conll import read_tag_set
from tasks.readers import load_task, read_split
from tasks.registry import get_task, tagging_task


@pytest.fixture(scope="module")
def chinese_tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    directory = tmp_path_factory.mktemp("zh-bert")
    write_vocab(directory, CJK_VOCAB)
    (directory / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": len(CJK_VOCAB)}))
    tok = AutoTokenizer.from_pretrained(str(directory))
    assert tok.is_fast and len(tok) == len(CJK_VOCAB)
    return tok


def test_tag_set_comes_from_the_training_file(tmp_path):
    data = write_chinese_ner(tmp_path, n_train=20, n_dev=5)
    task, folder = load_task("ner", str(data))
    assert folder == data
    assert task.name == "ner" and task.kind == "tagging" and task.metric == "f1"
    assert task.labels == ("O", "B-LOC", "I-LOC", "B-PER", "I-PER")  # O, then each type (sorted): B, I
    assert get_task("ner", labels=task.labels) == task
    train = read_split(task, "train", data)
    assert len(train) == 20
    assert all(len(w) == 1 for e in train for w in e.tokens)  # one character per word
    gold = [[(c, t) for c, t in s] for s in chinese_ner_sentences(20, 0)]
    assert [list(zip(e.tokens, e.tags)) for e in train] == gold


def test_ner_task_data_dir_comes_from_the_flag_or_ner_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("NER_DIR", raising=False)
    monkeypatch.setenv("CONLL_DIR", str(tmp_path))  # never read for `ner`
    with pytest.raises(UserError, match=r"pass --data-dir or set \$NER_DIR"):
        load_task("ner")
    data = write_chinese_ner(tmp_path / "zh", n_train=4, n_dev=2)
    monkeypatch.setenv("NER_DIR", str(data))
    assert load_task("ner")[1] == data
    with pytest.raises(UserError, match="tag set comes from its training file"):
        get_task("ner")


def test_tag_set_errors_name_the_file_and_line(write):
    path = write("train.txt", "张 B-PER\n三 E-PER\n")
    with pytest.raises(DataError, match=r"train.txt:2: tag 'E-PER' is not IOB2 .*BIOES/BMES"):
        read_tag_set(path)
    path = write("train.txt", "张 O\n三 O\n")
    with pytest.raises(DataError, match="no entity tags"):
        read_tag_set(path)
    path = write("train.txt", "张 B-PER\n三\n")
    with pytest.raises(DataError, match=r"train.txt:2: expected 2 fields \(token tag\), 3 .* found 1"):
        read_tag_set(path)


def test_dev_tags_outside_the_training_tags_are_refused(tmp_path):
    data = write_chinese_ner(tmp_path, n_train=10, n_dev=3)
    (data / "dev.txt").write_text("张 B-ORG\n三 I-ORG\n\n", encoding="utf-8")
    task, _ = load_task("ner", str(data))
    with pytest.raises(DataError, match=r"dev.txt:1: unknown tag 'B-ORG'"):
        read_split(task, "dev", data)


def test_conll2003_still_needs_its_pos_column(write):
    path = write("train.txt", "EU NNP B-ORG\nrejects O\n")
    with pytest.raises(DataError, match=r"train.txt:2: expected 3 fields \(token POS tag\) or 4"):
        read_split(get_task("conll2003"), "train", path.parent)


def test_tagging_task_rejects_a_tag_set_that_is_not_iob2():
    with pytest.raises(UserError, match="needs both B-PER and I-PER"):
        tagging_task(("O", "B-PER"))


def test_each_character_is_one_token_and_labels_align(tmp_path, chinese_tokenizer):
    data = write_chinese_ner(tmp_path, n_train=30, n_dev=5)
    task, _ = load_task("ner", str(data))
    examples = read_split(task, "train", data)
    examples.append(TaggingExample("unk", ("龙", "张", "伟", "在", "北", "京"),  # 龙 is not in the vocab
                                   ("O", "B-PER", "I-PER", "O", "B-LOC", "I-LOC")))
    features = encode(task, examples, chinese_tokenizer)
    vocab = {w: i for i, w in enumerate(CJK_VOCAB)}
    for i, ex in enumerate(examples):
        n = len(ex.tokens)
        ids, words, labels = features.input_ids[i], features.word_ids[i], features.labels[i]
        assert len(ids) == n + 2  # [CLS] one token per character [SEP]
        assert ids[0] == vocab["[CLS]"] and ids[-1] == vocab["[SEP]"]
        assert list(ids[1:-1]) == [vocab.get(c, vocab["[UNK]"]) for c in ex.tokens]
        assert list(words) == [-1, *range(n), -1]
        assert labels[0] == labels[-1] == IGNORE
        assert [task.labels[k] for k in labels[1:-1]] == list(ex.tags)
    assert features.input_ids[-1][1] == vocab["[UNK]"]
    assert np.all(features.lengths == np.array([len(e.tokens) + 2 for e in examples]))
