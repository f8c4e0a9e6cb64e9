"""The local Ray that a search starts listens on 127.0.0.1 only, and nothing turns off Ray's token authentication."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from nas.config import SearchConfig
from nas.tune import LOCALHOST, init_ray, ray_init_kwargs

ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


def test_a_local_ray_is_bound_to_loopback(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    kwargs = ray_init_kwargs(SearchConfig())
    assert kwargs["address"] == "local"  # a private Ray, never one that happens to run here
    assert kwargs["_node_ip_address"] == LOCALHOST == "127.0.0.1"
    assert kwargs["dashboard_host"] == LOCALHOST and kwargs["include_dashboard"] is False
    assert not any("auth" in k.lower() or k == "_system_config" for k in kwargs)


@pytest.mark.parametrize("address,env", [("auto", None), (None, "10.1.2.3:6379"), ("ray://head:10001", None)])
def test_a_cluster_keeps_its_own_addresses(monkeypatch, address, env):
    if env is None:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("RAY_ADDRESS", env)
    kwargs = ray_init_kwargs(SearchConfig(address=address))
    assert kwargs["address"] == (address or env)
    assert "_node_ip_address" not in kwargs and "dashboard_host" not in kwargs
    assert not any("auth" in k.lower() or k == "_system_config" for k in kwargs)


def test_no_code_turns_off_token_authentication():
    """Token auth goes off only through RAY_AUTH_MODE (or AUTH_MODE in `_system_config`): no source names them."""
    pattern = re.compile(r"AUTH_MODE|auth_mode|_system_config|RAY_AUTH_TOKEN")
    sources = [p for d in ("nas", "distill", "tasks", "scripts") for p in (ROOT / d).rglob("*.py")]
    assert len(sources) > 20
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p in sources
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not offenders, offenders
    # Every ray.init call passes ray_init_kwargs' arguments (`**kwargs`) and nothing else.
    calls = [node for p in sources for node in ast.walk(ast.parse(p.read_text()))
             if isinstance(node, ast.Call) and ast.unparse(node.func) == "ray.init"]
    assert calls and all(not c.args and [ast.unparse(k) for k in c.keywords] == ["**kwargs"] for c in calls)


def _listening(process) -> set[tuple[int, str, int]]:
    """(pid, ip, port) of every TCP socket that `process` and its descendants listen on."""
    import psutil

    found = set()
    for p in [process, *process.children(recursive=True)]:
        try:
            found |= {(p.pid, c.laddr.ip, c.laddr.port) for c in p.net_connections(kind="inet")
                      if c.status == psutil.CONN_LISTEN}
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


@pytest.mark.slow
def test_the_local_ray_listens_on_loopback_only_with_token_auth(monkeypatch):
    """Start the search's local Ray; every socket it (and this driver) opened for listening is on 127.0.0.1."""
    import psutil
    import ray
    from ray._private import ray_constants
    from ray._raylet import AuthenticationMode, get_authentication_mode

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)  # Ray's own default for a new local cluster
    if ray.is_initialized():
        ray.shutdown()
    me = psutil.Process()
    before = _listening(me)
    clusters = ray_constants.ENABLE_RAY_CLUSTER
    init_ray(SearchConfig())
    try:
        assert ray_constants.ENABLE_RAY_CLUSTER == clusters  # restored once Ray is up
        assert ray.get(ray.remote(lambda: 1).remote()) == 1  # a worker is up (and listening) too
        opened = _listening(me) - before
        assert len({pid for pid, _, _ in opened}) >= 3, opened  # the driver, GCS, raylet, workers, agents
        exposed = sorted(s for s in opened if s[1] not in LOOPBACK)
        assert not exposed, f"listening beyond loopback: {exposed}"
        node = ray._private.worker.global_worker.node
        assert node.node_ip_address == LOCALHOST and node.gcs_address.startswith(f"{LOCALHOST}:")
        assert get_authentication_mode() == AuthenticationMode.TOKEN
    finally:
        ray.shutdown()
