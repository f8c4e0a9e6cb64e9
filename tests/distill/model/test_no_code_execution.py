"""Loading a model never runs code from its directory, and an export is never written outside its root.

Models are read from safetensors and JSON only: the package source never
unpickles (no pickle-family import, no `allow_pickle`, no remote code), and a
model directory that carries a malicious pickle and custom Python code next to
its safetensors loads without running any of it.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import write_task_teacher

from distill.export.hf import export_model
from distill.export.load import load_export
from distill.files import check_output_path, export_path
from distill.model.store import load_bert
from tasks.errors import UserError
from tasks.registry import get_task

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = ("distill", "tasks", "nas", "scripts")
UNPICKLERS = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "joblib", "shelve", "marshal", "torch"}


def _offences(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, f"import {a.name}") for a in node.names if a.name.split(".")[0] in UNPICKLERS]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNPICKLERS:
            found.append((node.lineno, f"from {node.module} import ..."))
        elif isinstance(node, ast.Call):
            func = ast.unparse(node.func)
            kw = {k.arg: k.value for k in node.keywords if k.arg}
            for name in ("allow_pickle", "trust_remote_code"):
                if name in kw and not (isinstance(kw[name], ast.Constant) and kw[name].value is False):
                    found.append((node.lineno, f"{func}({name}={ast.unparse(kw[name])})"))
            if func.split(".")[-1] in ("read_pickle", "eval", "exec") or func.endswith("torch.load"):
                found.append((node.lineno, func))
            auto = func.endswith(".from_pretrained") and func.split(".")[-2].startswith("Auto")
            refused = isinstance(kw.get("trust_remote_code"), ast.Constant) and kw["trust_remote_code"].value is False
            if auto and not refused:
                found.append((node.lineno, f"{func} without trust_remote_code=False"))
    return found


def test_the_scan_finds_what_it_looks_for():
    bad = ast.parse(
        "import pickle\nfrom joblib import load\nnp.load(f, allow_pickle=True)\ntorch.load(f)\n"
        "AutoTokenizer.from_pretrained(d)\nAutoModel.from_pretrained(d, trust_remote_code=True)\neval(s)\n"
    )
    assert [line for line, _ in _offences(bad)] == [1, 2, 3, 4, 5, 6, 6, 7]
    good = ast.parse(
        "np.load(f)\nnp.load(f, allow_pickle=False)\nAutoTokenizer.from_pretrained(d, trust_remote_code=False)\n"
    )
    assert _offences(good) == []


def test_package_source_never_unpickles_or_runs_model_code():
    sources = [p for d in PACKAGES for p in (ROOT / d).rglob("*.py")]
    assert len(sources) > 20
    offences = [
        f"{p.relative_to(ROOT)}:{line}: {what}" for p in sources for line, what in _offences(ast.parse(p.read_text()))
    ]
    assert not offences, offences


class _Payload:
    """Unpickling this writes `marker`: proof that a pickle was loaded."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _booby_trapped(src: Path, dest: Path, marker: Path) -> Path:
    """A copy of a model directory with a malicious pytorch_model.bin and custom code its configs point to."""
    shutil.copytree(src, dest)
    (dest / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    for module in ("configuration_evil", "modeling_evil", "tokenization_evil"):
        (dest / f"{module}.py").write_text(f"open({str(marker)!r}, 'w').write({module!r})\n")
    cfg = json.loads((dest / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel"}
    (dest / "config.json").write_text(json.dumps(cfg))
    tok_cfg = json.loads((dest / "tokenizer_config.json").read_text())
    tok_cfg["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", "tokenization_evil.EvilTokenizer"]}
    (dest / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    return dest


def test_a_model_directory_with_pickles_and_code_loads_without_running_them(tmp_path):
    clean = write_task_teacher(tmp_path / "clean", "sst2")
    marker = tmp_path / "code-ran"
    trapped = _booby_trapped(clean, tmp_path / "trapped", marker)
    pickle.loads((trapped / "pytorch_model.bin").read_bytes())
    assert marker.exists()  # the trap is armed: unpickling the weights file runs code
    marker.unlink()

    for load in (load_bert, load_export):
        model = load(trapped)
        assert model.arch == load(clean).arch and model.head == "classification"
        assert model.tokenizer("a fun movie")["input_ids"] == load(clean).tokenizer("a fun movie")["input_ids"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "predict.py"), "--model", str(trapped)],
        input="a fun movie\n", capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["label"] in ("0", "1")
    assert not marker.exists(), f"code from the model directory ran: {marker.read_text()}"


def test_exports_stay_inside_their_root(tmp_path):
    with pytest.raises(UserError, match=r"--output runs/\.\./x: '\.\.' is not allowed"):
        check_output_path("runs/../x")
    assert check_output_path(tmp_path / "runs" / "x") == tmp_path / "runs" / "x"

    root = tmp_path / "export"
    root.mkdir()
    assert export_path(root, "01-2L-36-H3-F37") == root / "01-2L-36-H3-F37"
    (root / "link").symlink_to(tmp_path)
    for name in ("../outside", "/tmp/outside", "a/../../outside", "link/outside"):
        with pytest.raises(UserError, match="an export must stay inside"):
            export_path(root, name)

    model = load_export(write_task_teacher(tmp_path / "model", "sst2"))
    climbing = tmp_path / "runs" / ".." / "outside"
    with pytest.raises(UserError, match="'..' is not allowed"):
        export_model(climbing, model.arch, model.params, model.tokenizer, get_task("sst2"))
    assert not (tmp_path / "outside").exists() and not (tmp_path / "runs").exists()
