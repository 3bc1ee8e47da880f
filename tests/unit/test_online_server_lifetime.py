"""A server llem started never outlives llem: SIGKILL, ``os._exit``, SIGTERM or SIGINT of llem.

Real processes: the server is ``fake_openai_server.py`` (serving the OpenAI API, with a child
process of its own in its process group), started through ``ManagedServer`` from a stand-in
parent (``server_parent.py``) or by ``llem run`` itself (as the ``vllm`` program first on
``PATH``). The tests wait for processes to go by polling, with a generous bound; they assert no
duration.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).parent
FAKE = HERE / "fake_openai_server.py"
PARENT = HERE / "server_parent.py"
BOUND_S = 60.0  # far above what any of this takes, even on a loaded machine


def eventually(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + BOUND_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still not so after {BOUND_S:g} s: {what}")
        time.sleep(0.05)


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields  # state, ppid, pgrp, ...


def alive(pid: int) -> bool:
    return _stat(pid) is not None


def group_members(pgid: int) -> list[int]:
    """Live processes in process group ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) is not None and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) is not None and int(fields[1]) == pid:
            out.append(int(entry))
    return out


def child_pid(log: Path) -> int:
    eventually(lambda: "child-pid" in log.read_text(), f"the server's child pid in {log}")
    return int(re.search(r"child-pid (\d+)", log.read_text()).group(1))  # type: ignore[union-attr]


@contextlib.contextmanager
def reaped(*pids: int) -> Iterator[None]:
    """Whatever a failing test leaves behind is killed afterwards."""
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def start_parent(tmp_path: Path, how: str, *flags: str, grace_s: float = 1.0):
    log = tmp_path / "server.log"
    argv = [sys.executable, str(PARENT), str(log), str(grace_s), how]
    argv += [sys.executable, str(FAKE), "--child", *flags]
    parent = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,  # a line on it lets an ``os_exit`` parent leave
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert parent.stdout is not None
    line = parent.stdout.readline()
    if not line:
        raise AssertionError(f"the parent ended early: {parent.communicate()[1]}")
    pids = json.loads(line)
    return parent, pids["server"], pids["watchdog"], child_pid(log)


@pytest.mark.parametrize(
    ("how", "flags"),
    [
        ("sigkill", ()),  # the parent-death signal ends the server, the watchdog its child
        ("sigkill", ("--ignore-sigterm",)),  # the watchdog's SIGKILL after the grace period
        ("os_exit", ()),  # a study worker leaving without clean-up
    ],
)
def test_the_servers_whole_group_goes_when_its_parent_dies(tmp_path, how, flags):
    parent, server, watchdog, child = start_parent(
        tmp_path, "os_exit" if how == "os_exit" else "wait", *flags
    )
    with reaped(server, child, watchdog, parent.pid), parent:
        assert group_members(server) and alive(child) and alive(watchdog)
        if how == "sigkill":
            parent.kill()
        else:  # the parent leaves by os._exit once told to (after the checks above)
            assert parent.stdin is not None
            parent.stdin.write("exit\n")
            parent.stdin.flush()
        assert parent.wait(timeout=BOUND_S) in (-signal.SIGKILL, 70)
        eventually(lambda: not group_members(server), "the server's process group is gone")
        assert not alive(child)
        eventually(lambda: not alive(watchdog), "the watchdog exits once its work is done")


def test_the_parent_death_signal_alone_ends_the_server(tmp_path):
    # without the watchdog (killed first), Linux's parent-death signal still stops the server
    parent, server, watchdog, child = start_parent(tmp_path, "wait")
    with reaped(server, child, watchdog, parent.pid), parent:
        os.kill(watchdog, signal.SIGKILL)
        eventually(lambda: not alive(watchdog), "the watchdog is gone")
        assert alive(server)
        parent.kill()
        parent.wait(timeout=BOUND_S)
        eventually(lambda: not alive(server), "the server got SIGTERM when its parent died")


def test_a_server_stopped_normally_takes_its_watchdog_along(tmp_path):
    from llenergymeasure.online.server import ManagedServer, free_port

    port = free_port()
    server = ManagedServer(
        [sys.executable, str(FAKE), "--port", str(port)],
        host="127.0.0.1",
        port=port,
        log_path=tmp_path / "server.log",
        grace_s=2.0,
        poll_s=0.05,
    )
    with server:
        assert server._watchdog is not None
        watchdog = server._watchdog.pid
        assert alive(watchdog)
    assert not alive(watchdog) and server._watchdog is None


# ─── `llem run` in online mode with the server it started ───────────────────────────────────


def llem_run_in_background(tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path, Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_vllm = bin_dir / "vllm"  # `vllm serve MODEL --host H --port P ...` runs the fake server
    fake_vllm.write_text(
        f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" --child --token-delay 0.5 "$@"\n'
    )
    fake_vllm.chmod(fake_vllm.stat().st_mode | stat.S_IXUSR)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(4)))
    config = tmp_path / "exp.yaml"
    config.write_text(
        f"model: m\nbackend: vllm\ndataset: {prompts}\nn: 4\nmax_new_tokens: 200\n"
        "mode: online\nonline:\n  n_warmup_requests: 0\n  server: {startup_timeout_s: 60}\n"
    )
    out = tmp_path / "out"
    stderr = tmp_path / "stderr.txt"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    with open(stderr, "wb") as err:
        llem = subprocess.Popen(
            [sys.executable, "-m", "llenergymeasure", "run", str(config), "-o", str(out)],
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
            start_new_session=True,
        )
    return llem, out, stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_llem_run_stopped_mid_load_leaves_no_server_running(tmp_path, sig):
    llem, out, stderr = llem_run_in_background(tmp_path)
    with reaped(llem.pid), llem:
        # the load is under way: requests of 200 tokens, 0.5 s apart, are streaming
        eventually(lambda: "sending 0 warmup + 4 requests" in stderr.read_text(), "the load starts")
        (server,) = [p for p in children(llem.pid) if str(FAKE) in _cmdline(p)]
        log = next(out.rglob("server.log"))
        child = child_pid(log)
        with reaped(server, child):
            llem.send_signal(sig)
            code = llem.wait(timeout=BOUND_S)
            eventually(lambda: not group_members(server), "the server's process group is gone")
            assert not alive(child)
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
        return
    assert code == 130  # Ctrl-C and SIGTERM alike
    text = stderr.read_text()
    assert "interrupted" in text
    assert "kept server.log" in text  # the interrupted run's server log stays, as for Ctrl-C
    assert log.is_file() and not list(out.rglob("result.json"))


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
