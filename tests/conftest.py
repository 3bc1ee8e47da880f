"""Shared test fixtures: keep every test away from the real user config and caches."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import settings

from llenergymeasure.hub import probe_hub as _REAL_PROBE_HUB

# Property tests: the same examples on every run by default, so that CI's verdict depends on the
# code alone; `HYPOTHESIS_PROFILE=explore pytest ...` draws new examples (and found the 5e-324 s
# counter span that tests/unit/test_phase_split_attribution.py now keeps as a regression test).
settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

# The Ctrl-C tests send SIGINT to pytest or to the llem processes it starts. A suite launched
# as a background job of a non-interactive shell inherits SIGINT ignored, which exec keeps, so
# every such process would shrug the signal off; a Python handler here is reset to the default
# in each started process instead.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def isolated_user_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """No test reads ~/.config, the llem cache, the HF cache or a developer's LLEM_* variables."""
    home = tmp_path_factory.mktemp("home")
    for name in list(os.environ):
        if name.startswith("LLEM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.setenv("LLEM_CACHE_DIR", str(home / "llem-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hf-cache"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))  # rescued results land here
    return home


@pytest.fixture
def reachable_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """The HF hub counts as reachable, and nothing is asked of the network: the bounded probe
    answers "reachable" without a request. Pre-flight then lets hub ids that are not in the
    (empty, per-test) HF cache through to the engine; for tests whose engine is a fake that
    downloads nothing (``org/model`` and the like)."""
    from llenergymeasure import hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "probe_hub", lambda **_: None)


@pytest.fixture
def unreachable_hub(monkeypatch: pytest.MonkeyPatch) -> str:
    """``HF_ENDPOINT`` at a local port where nothing listens: the real bounded probe fails at
    once (connection refused) and nothing leaves the machine. Returns the endpoint."""
    from llenergymeasure import hub

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    for name in ("HF_HUB_OFFLINE", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(hub, "_probes", {})
    monkeypatch.setattr(hub, "probe_hub", _REAL_PROBE_HUB)  # over reachable_hub, if applied
    return endpoint


@pytest.fixture
def write_yaml(tmp_path: Path) -> Callable[..., Path]:
    """Write text to ``tmp_path/<name>`` and return the path."""

    def _write(text: str, name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    return _write


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``builtin:tiny`` built once per test session into its own cache folder."""
    from llenergymeasure.engines.builtin import resolve_builtin_model

    return resolve_builtin_model("builtin:tiny", cache_dir=tmp_path_factory.mktemp("llem-cache"))
