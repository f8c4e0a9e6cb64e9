"""A seeded fuzz drill: malformed flag values, architecture names, data files, model directories and search
spaces, each run through the command line's runner (`distill.cli.run`), in process. Every case must end
with exit 0 or with exit 2 and one line `error: ...`; never a traceback, never exit 70 (a bug).

The tools' own work (training) is out of scope here: a flag case parses and maps to the tool's run config
(which validates it); a file case reads it as the tool would (task reader, model loader, space loader).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import shutil
import string

import pytest
from helpers import conll_sentences, conll_text, write_sst2, write_stsb, write_task_teacher

from distill import cli
from distill.arch import parse_arch_name
from distill.export.load import load_export
from distill.model.store import load_bert, read_arch
from nas import cli as nas_cli
from nas.space import get_space
from tasks.readers import read_split
from tasks.registry import get_task

SEED = 20261204
NUMBERS = ["-1", "0", "1", "2", "0.5", "-0.0", "inf", "-inf", "nan", "1e309", "1e-320", "abc", "", " ", "1,5",
           "0x10", "１", "\u22121", "99999999999999999999", "3.", ".5", "1e3", "True", "None", "--", "-", "7" * 400]
ARCH_PIECES = ["L", "-", "H", "F", "D", "G", ",", "0", "1", "3", "12", "36", "64", "384", "99999999999", " ", "x",
               "-H3", "-F72", "-D12", "-G0,1", "2L-36", "1L-", "é", "\u0000"]
TEXTS = ["", "x", "\x00", "\xff", "\ufeff", "\t", "\t\t", "\n", "\r\n", "\r", "é", "🙂", "1", "-1", "2", "nan",
         "5.5", "1e400", "O", "B-PER", "I-XYZ", "-DOCSTART-", " ", "a" * 5000]
VALUES = [None, True, False, 0, -1, 1, 3, 2.5, -3.7, 1e9, 10 ** 12, float("nan"), "", "two", "36", [], [1, "x"],
          {}, {"a": 1}, [0] * 7, [36], "bert", "relu", "gelu_new"]


def outcome(fn) -> tuple[int, str]:
    """Exit status and stderr of `fn` run by the command line's runner."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            cli.run(lambda: (fn(), 0)[1])
        except SystemExit as e:
            return int(e.code or 0), err.getvalue()
    raise AssertionError("cli.run returned without exiting")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("fuzz")
    conll = root / "conll"
    conll.mkdir()
    for split, n in (("train", 12), ("valid", 4), ("test", 4)):
        (conll / f"{split}.txt").write_text(conll_text(conll_sentences(n, seed=n)))
    return {"root": root, "sst2": write_sst2(root / "sst2", n_train=12, n_dev=4),
            "stsb": write_stsb(root / "stsb", n_train=12, n_dev=4), "conll": conll,
            "model": write_task_teacher(root / "model", "sst2")}


def numeric_flags() -> dict[str, list[str]]:
    """Each tool's flags that take a value (store actions with a type or choices), from the real parser."""
    sub = next(a for a in nas_cli.parser()._actions if isinstance(a, argparse._SubParsersAction))
    flags = {}
    for name, p in sub.choices.items():
        flags[name] = [a.option_strings[-1] for a in p._actions
                       if a.option_strings and isinstance(a, argparse._StoreAction) and (a.type or a.choices)]
    return flags


def flag_cases(rng: random.Random, world: dict, n: int) -> list:
    required = {"finetune": ["--output", "o"], "distill": ["--output", "o"], "supernet": ["--output", "o"],
                "search": [], "evaluate": ["--model", "m"], "predict": ["--model", "m"],
                "quantize": ["--model", "m", "--output", "o"], "export": ["--model", "m", "--output", "o"]}
    mappings = {"finetune": "finetune", "distill": "distill", "supernet": "supernet", "quantize": "quantize"}
    flags = numeric_flags()
    cases = []
    for _ in range(n):
        tool = rng.choice(sorted(flags))
        flag = rng.choice(flags[tool])
        value = rng.choice(NUMBERS) if rng.random() < 0.7 else str(rng.uniform(-1e6, 1e6))
        argv = [tool, *required[tool], f"{flag}={value}"]

        def case(argv=argv, tool=tool):
            args = nas_cli.parse(argv)
            if tool == "search":
                nas_cli.config(args)
            elif tool in mappings:
                getattr(__import__(f"distill.cli.{mappings[tool]}", fromlist=["config"]), "config")(args)

        cases.append((f"flags {argv}", case))
    return cases


def arch_cases(rng: random.Random, world: dict, n: int) -> list:
    base = read_arch(world["model"])
    cases = []
    for _ in range(n):
        name = "".join(rng.choice(ARCH_PIECES) for _ in range(rng.randint(1, 8)))
        if rng.random() < 0.5:
            name = f"{rng.randint(0, 5)}L-{rng.choice([0, 12, 36, 37, 99999999999])}{name}"
        cases.append((f"arch name {name!r}", lambda name=name: parse_arch_name(name, base)))
    return cases


def mutate_text(rng: random.Random, text: str) -> str:
    lines = text.split("\n")
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(lines))
        kind = rng.randrange(6)
        if kind == 0:
            lines[i] = rng.choice(TEXTS)
        elif kind == 1:
            lines[i] = lines[i] + rng.choice(TEXTS)
        elif kind == 2:
            lines.insert(i, rng.choice(TEXTS))
        elif kind == 3:
            del lines[i]
            lines = lines or [""]
        elif kind == 4:
            cut = rng.randrange(len(lines[i]) + 1)
            lines[i] = lines[i][:cut] + rng.choice(TEXTS) + lines[i][cut:]
        else:
            lines[i] = lines[i].replace(rng.choice(["\t", " ", "1", "0", "O"]), rng.choice(TEXTS), 1)
    return "\n".join(lines)


def data_cases(rng: random.Random, world: dict, n: int) -> list:
    specs = [("sst2", "train.tsv"), ("stsb", "train.tsv"), ("conll2003", "train.txt")]
    sources = {"sst2": world["sst2"], "stsb": world["stsb"], "conll2003": world["conll"]}
    cases = []
    for i in range(n):
        task, name = rng.choice(specs)
        folder = world["root"] / "data" / f"{i:04d}"
        shutil.copytree(sources[task], folder)
        path = folder / name
        if rng.random() < 0.15:
            raw = bytearray(path.read_bytes())
            for _ in range(rng.randint(1, 4)):
                raw[rng.randrange(len(raw))] = rng.randrange(256)
            path.write_bytes(bytes(raw))
        else:
            path.write_text(mutate_text(rng, path.read_text()))
        cases.append((f"{task} file {path}", lambda task=task, folder=folder: read_split(get_task(task), "train", folder)))
    return cases


def model_cases(rng: random.Random, world: dict, n: int) -> list:
    cases = []
    for i in range(n):
        folder = world["root"] / "models" / f"{i:04d}"
        shutil.copytree(world["model"], folder)
        cfg_file = folder / "config.json"
        cfg = json.loads(cfg_file.read_text())
        kind = rng.randrange(5)
        if kind == 0:  # a top-level field
            cfg[rng.choice(sorted(cfg))] = rng.choice(VALUES)
        elif kind == 1:  # a field of our bertnas block (architecture, head, labels)
            block = cfg["bertnas"]
            key = rng.choice(sorted(block))
            if isinstance(block[key], dict) and block[key]:
                block[key][rng.choice(sorted(block[key]))] = rng.choice(VALUES)
            else:
                block[key] = rng.choice(VALUES)
        elif kind == 2:
            del cfg[rng.choice(sorted(cfg))]
        if kind == 3:
            cfg_file.write_text(mutate_text(rng, cfg_file.read_text()))
        elif kind == 4:
            victim = folder / rng.choice(["model.safetensors", "tokenizer.json", "tokenizer_config.json"])
            raw = victim.read_bytes()
            victim.write_bytes(raw[: rng.randrange(len(raw))] if rng.random() < 0.5 else raw + b"\xff" * 9)
        else:
            cfg_file.write_text(json.dumps(cfg))
        loader = load_export if rng.random() < 0.5 else load_bert
        cases.append((f"model dir {folder} ({cfg_file.read_text()[:300]!r})", lambda f=folder, load=loader: load(f)))
    return cases


def space_cases(rng: random.Random, world: dict, n: int) -> list:
    fields = ["layers", "hidden", "heads", "ffn", "head_size", "layer_maps", "share", "heterogeneous",
              "learning_rate", "temperature", rng.choice(string.ascii_lowercase)]
    teacher = read_arch(world["model"])
    cases = []
    for i in range(n):
        space = {"layers": [1, 2], "hidden": [24, 36]}
        for _ in range(rng.randint(1, 3)):
            space[rng.choice(fields)] = rng.choice(VALUES)
        path = world["root"] / "spaces" / f"{i:04d}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(space) if rng.random() < 0.8 else mutate_text(rng, json.dumps(space)))
        cases.append((f"space {space}", lambda p=path: get_space(p).validate(teacher)))
    return cases


def test_malformed_inputs_end_in_one_line_and_exit_2_or_succeed(world):
    rng = random.Random(SEED)
    cases = (flag_cases(rng, world, 250) + arch_cases(rng, world, 150) + data_cases(rng, world, 160)
             + model_cases(rng, world, 160) + space_cases(rng, world, 80))
    found = []
    for what, fn in cases:
        code, err = outcome(fn)
        lines = err.strip().splitlines()
        if code == 0:
            continue
        if code != 2 or len([ln for ln in lines if ln.startswith("error: ")]) != 1 or "Traceback" in err:
            found.append(f"{what}: exit {code}: {err.strip()[-400:]}")
    assert len(cases) == 800
    assert not found, f"{len(found)} of {len(cases)} cases:\n" + "\n".join(found[:25])
