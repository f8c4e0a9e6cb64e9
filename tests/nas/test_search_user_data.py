"""`bertnas search` on a generic task: the user's files become absolute in the saved config (trials run in
directories of their own), a resumed search reads them back, and every trial's config carries them."""

from __future__ import annotations

from helpers import write_tiny_teacher

from nas.config import SearchConfig
from nas.tune import _settle, base_distill_config, load_config
from tasks.userdata import DataSpec


def test_search_settles_a_generic_task_and_resumes_with_its_data(tmp_path, monkeypatch):
    teacher = write_tiny_teacher(tmp_path / "teacher")
    rows = "".join(f"{w} movie,{'pos' if w in ('good', 'fun') else 'neg'}\n" for w in ["good", "bad", "fun", "dull"] * 10)
    (tmp_path / "train.csv").write_text("review,sentiment\n" + rows)
    (tmp_path / "dev.csv").write_text("review,sentiment\ngood film,pos\nbad film,neg\n")
    monkeypatch.chdir(tmp_path)
    data = DataSpec(train_file="train.csv", dev_file="dev.csv", text_column="review", label_column="sentiment",
                    max_seq_length=24)
    cfg = SearchConfig(task="text-classification", teacher=str(teacher), data=data, space="tiny", strategy="trials",
                       num_samples=2)
    settled, _, task, data_dir = _settle(cfg, tmp_path / "out", resume=False)
    assert data_dir is None and task.labels == ("neg", "pos") and task.max_length == 24
    assert settled.data.train_file == str(tmp_path / "train.csv") and settled.validation == 4  # a tenth of 40
    assert load_config(tmp_path / "out") == settled
    base = base_distill_config(settled, data_dir)
    assert base.data == settled.data and base.data_dir is None
