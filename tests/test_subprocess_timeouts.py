"""Every child process a test starts is bounded: a hang fails the test instead of blocking CI.

Read from the test sources (AST): each `subprocess.run` / `call` / `check_call` / `check_output` passes
`timeout=`, and each `.wait()` / `.communicate()` on a `subprocess.Popen` object passes a timeout.
(A Popen polled in a loop has its own deadline; this checks the calls that would block.)
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
BLOCKING = {"run", "call", "check_call", "check_output"}


def _is_subprocess(func: ast.expr, names: set[str]) -> bool:
    return isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "subprocess" \
        and func.attr in names


def unbounded_calls(source: str, filename: str) -> list[str]:
    tree = ast.parse(source, filename)
    popens = {  # names (and self.x attributes) bound to a subprocess.Popen(...)
        ast.unparse(target)
        for node in ast.walk(tree) if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
        and _is_subprocess(node.value.func, {"Popen"})
        for target in node.targets
    }
    bad = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        keywords = {k.arg for k in node.keywords}
        if _is_subprocess(node.func, BLOCKING) and "timeout" not in keywords:
            bad.append(f"{filename}:{node.lineno}: subprocess.{node.func.attr} without timeout=")
        elif isinstance(node.func, ast.Attribute) and node.func.attr in ("wait", "communicate") \
                and ast.unparse(node.func.value) in popens and "timeout" not in keywords:
            positional = 1 if node.func.attr == "wait" else 2  # wait(timeout) / communicate(input, timeout)
            if len(node.args) < positional:
                bad.append(f"{filename}:{node.lineno}: {ast.unparse(node.func)}() without a timeout")
    return bad


def test_every_child_process_in_the_tests_has_a_timeout():
    bad = [line for path in sorted(TESTS.rglob("*.py"))
           for line in unbounded_calls(path.read_text(), str(path.relative_to(TESTS)))]
    assert not bad, "\n".join(bad)


def test_the_check_finds_unbounded_calls():
    source = '''
import subprocess
def f(cmd):
    subprocess.run(cmd, capture_output=True)
    subprocess.run(cmd, timeout=5)
    proc = subprocess.Popen(cmd)
    proc.wait()
    proc.wait(timeout=5)
    proc.communicate()
    proc.communicate(None, 5)
    other.wait()
'''
    assert [line.split(": ", 1)[1] for line in unbounded_calls(source, "x.py")] == [
        "subprocess.run without timeout=", "proc.wait() without a timeout", "proc.communicate() without a timeout"]
