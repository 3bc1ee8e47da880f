"""A stand-in for llem in the server-lifetime tests: starts a server through ``ManagedServer``
and then waits to be killed (or leaves by ``os._exit``, as a study worker whose study died does).

    python server_parent.py LOG_PATH GRACE_S {wait,os_exit} SERVER_ARGV...

Once the server is ready it prints one JSON line: ``{"server": pid, "watchdog": pid}``. With
``os_exit`` it then waits for a line on stdin (or its end) before leaving, so that the test sees
the server alive first, however slowly it gets to look.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from llenergymeasure.online.server import ManagedServer, free_port


def main(argv: list[str]) -> None:
    log_path, grace_s, how, *server_argv = argv
    port = free_port()
    server = ManagedServer(
        [*server_argv, "--port", str(port)],
        host="127.0.0.1",
        port=port,
        log_path=Path(log_path),
        startup_timeout_s=60,
        grace_s=float(grace_s),
        poll_s=0.05,
    )
    server.start()
    server.wait_ready()
    assert server.process is not None and server._watchdog is not None
    print(json.dumps({"server": server.process.pid, "watchdog": server._watchdog.pid}), flush=True)
    if how == "os_exit":
        sys.stdin.readline()
        os._exit(70)  # no clean-up at all, like a study worker whose parent died
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main(sys.argv[1:])
