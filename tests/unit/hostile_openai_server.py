"""A misbehaving OpenAI-compatible server on loopback, for the hostile-server tests.

``HostileServer(mode)`` answers every ``POST /v1/(chat/)completions`` the way ``mode`` says
(``STREAM_MODES``) and ``GET /v1/models`` / ``/health`` the way ``models`` says
(``MODELS_MODES``), writing raw bytes on the socket so that it can break HTTP, SSE and OpenAI's
format at will. It counts what it sent (``bytes_sent``) and whether the client hung up on it
before it was done (``client_hung_up``): a client that bounds what it reads hangs up early.

Endless or trickling modes stop by themselves after ``give_up_s`` (then the connection is
closed): a client without a working deadline then sees an unexpected end instead of a timeout,
so a test fails rather than hangs.

As a script (a server that llem starts in place of ``vllm``)::

    python hostile_openai_server.py --port P [--host H] --mode MODE [--models MODE] [--child]
"""

from __future__ import annotations

import argparse
import json
import socket
import socketserver
import subprocess
import sys
import threading
import time
from typing import Any

MB = 1 << 20

#: What a POST gets. "ok*" modes are well-formed streams (with lying usage for "usage_*").
STREAM_MODES = (
    "ok",
    "hang_before_headers",
    "hang_mid_stream",
    "slow_headers",  # the status line, one byte every `drip_s`
    "slow_body",  # headers, then one byte every `drip_s`
    "not_json",  # a data line that is not JSON
    "html",  # 200 text/html
    "json_not_stream",  # 200 application/json: a non-streamed completion
    "huge_line",  # up to 100 MB on one line
    "huge_chunk",  # one chunked-encoding chunk of 100 MB
    "endless_tokens",  # token chunks forever
    "endless_comments",  # SSE comments forever, no data
    "cut",  # two tokens, then the connection is closed mid-stream
    "bad_chunked",  # a chunk size that is not hex
    "error_huge_body",  # HTTP 500 with a 100 MB body
    "huge_headers",  # a 1 MB header line
    "gzip",  # claims a gzip-encoded stream
    "deep_json",  # a data line nested 200 000 deep
    "echo_key",  # HTTP 401 whose body repeats the request's Authorization header
    "usage_negative",
    "usage_over_max",
    "usage_below_stream",
    "usage_not_int",
    "continuous_over_max",  # a running usage count above max_tokens
)
#: What GET /v1/models (and /health) get.
MODELS_MODES = ("ok", "hang", "slow", "huge", "garbage", "unauthorized")


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class HostileServer:
    """A raw-socket server whose answers follow ``mode`` (streams) and ``models`` (GETs)."""

    def __init__(
        self,
        mode: str = "ok",
        *,
        models: str = "ok",
        n_tokens: int = 3,
        drip_s: float = 0.2,
        give_up_s: float = 60.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if mode not in STREAM_MODES or models not in MODELS_MODES:
            raise ValueError(f"unknown mode {mode!r} / {models!r}")
        self.mode = mode
        self.models = models
        self.n_tokens = n_tokens
        self.drip_s = drip_s
        self.give_up_s = give_up_s
        self.bytes_sent: list[int] = []
        self.client_hung_up: list[bool] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._tcp = _TCPServer((host, port), _make_handler(self))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._tcp.server_address[1]}"

    def __enter__(self) -> HostileServer:
        self._thread = threading.Thread(
            target=self._tcp.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._tcp.shutdown()
        self._tcp.server_close()

    def wait(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless stopping; True when the server is stopping."""
        return self._stop.wait(seconds)


class _HungUp(Exception):
    pass


def _make_handler(server: HostileServer) -> type[socketserver.BaseRequestHandler]:
    class Handler(socketserver.BaseRequestHandler):
        def setup(self) -> None:
            self.sent = 0
            self.headers_in: dict[str, str] = {}

        def send(self, data: bytes) -> None:
            try:
                self.request.sendall(data)
            except OSError as exc:
                raise _HungUp from exc
            self.sent += len(data)

        def handle(self) -> None:
            sock: socket.socket = self.request
            sock.settimeout(30)
            hung_up = False
            try:
                method, path, headers, body = self.read_request()
                self.headers_in = headers
                with server._lock:
                    server.requests.append((method, path, headers))
                if method == "GET":
                    self.answer_get(path)
                else:
                    self.answer_post(body)
            except _HungUp:
                hung_up = True
            except (OSError, ValueError):
                return
            finally:
                with server._lock:
                    server.bytes_sent.append(self.sent)
                    server.client_hung_up.append(hung_up)

        def read_request(self) -> tuple[str, str, dict[str, str], dict[str, Any]]:
            data = b""
            while b"\r\n\r\n" not in data:
                piece = self.request.recv(65536)
                if not piece:
                    raise ValueError("no request")
                data += piece
            head, _, rest = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", 0))
            while len(rest) < length:
                piece = self.request.recv(65536)
                if not piece:
                    break
                rest += piece
            body = json.loads(rest) if rest else {}
            return method, path, headers, body

        def head(self, status: str, headers: dict[str, str]) -> None:
            lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers.items())]
            self.send(("\r\n".join(lines) + "\r\n\r\n").encode())

        def drip(self, data: bytes) -> None:
            """One byte every ``drip_s``, until ``give_up_s`` or the client hangs up."""
            end = time.monotonic() + server.give_up_s
            for i in range(len(data)):
                if time.monotonic() > end or server.wait(server.drip_s):
                    return
                self.send(data[i : i + 1])

        def endless(self, piece: bytes, *, limit: int = 100 * MB) -> None:
            end = time.monotonic() + server.give_up_s
            sent = 0
            while sent < limit and time.monotonic() < end and not server._stop.is_set():
                self.send(piece)
                sent += len(piece)

        def answer_get(self, path: str) -> None:
            mode = server.models
            if mode == "hang":
                server.wait(server.give_up_s)
                return
            if mode == "unauthorized":
                payload = b'{"error": {"message": "missing API key"}}'
                self.head("401 Unauthorized", {"Content-Length": str(len(payload))})
                self.send(payload)
                return
            if mode == "huge":
                size = 9 * MB
                self.head(
                    "200 OK", {"Content-Type": "application/json", "Content-Length": str(size)}
                )
                self.endless(b"[" * 65536, limit=size)
                return
            payload = (
                b"this is not json"
                if mode == "garbage"
                else json.dumps({"data": [{"id": "m", "object": "model"}]}).encode()
            )
            if mode == "slow":
                self.head("200 OK", {"Content-Type": "application/json"})
                self.drip(payload * 1000)
                return
            self.head(
                "200 OK", {"Content-Type": "application/json", "Content-Length": str(len(payload))}
            )
            self.send(payload)

        def event(self, obj: Any) -> bytes:
            text = obj if isinstance(obj, str) else json.dumps(obj)
            return f"data: {text}\n\n".encode()

        def token(self, i: int, *, last: bool = False, usage: dict | None = None) -> bytes:
            choice = {"index": 0, "text": f"t{i} ", "finish_reason": "length" if last else None}
            chunk: dict[str, Any] = {"object": "text_completion", "choices": [choice]}
            if usage is not None:
                chunk["usage"] = usage
            return self.event(chunk)

        def stream(self, events: list[bytes], *, chunked: bool = True) -> None:
            headers = {"Content-Type": "text/event-stream", "Connection": "close"}
            if chunked:
                headers["Transfer-Encoding"] = "chunked"
            self.head("200 OK", headers)
            for data in events:
                self.send(f"{len(data):x}\r\n".encode() + data + b"\r\n" if chunked else data)
            if chunked:
                self.send(b"0\r\n\r\n")

        def answer_post(self, body: dict[str, Any]) -> None:
            mode = server.mode
            n = server.n_tokens
            max_tokens = int(body.get("max_tokens", n))
            tokens = [self.token(i, last=i == n - 1) for i in range(n)]
            sse = {"Content-Type": "text/event-stream", "Connection": "close"}
            if mode == "ok":
                usage = {"prompt_tokens": 2, "completion_tokens": n}
                self.stream(
                    [*tokens, self.event({"choices": [], "usage": usage}), b"data: [DONE]\n\n"]
                )
            elif mode.startswith("usage_"):
                reported: Any = {
                    "usage_negative": -5,
                    "usage_over_max": max_tokens + 1000,
                    "usage_below_stream": max(0, n - 2),
                    "usage_not_int": "many",
                }[mode]
                usage = {"prompt_tokens": 2, "completion_tokens": reported}
                self.stream(
                    [*tokens, self.event({"choices": [], "usage": usage}), b"data: [DONE]\n\n"]
                )
            elif mode == "continuous_over_max":
                events = [
                    self.token(i, last=i == n - 1, usage={"completion_tokens": 10**9})
                    for i in range(n)
                ]
                self.stream([*events, b"data: [DONE]\n\n"])
            elif mode == "hang_before_headers":
                server.wait(server.give_up_s)
            elif mode == "hang_mid_stream":
                self.head("200 OK", {**sse, "Transfer-Encoding": "chunked"})
                for data in tokens[:2]:
                    self.send(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                server.wait(server.give_up_s)
            elif mode == "slow_headers":
                self.drip(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n" * 100)
            elif mode == "slow_body":
                self.head("200 OK", sse)
                self.drip(b"".join(tokens) * 100)
            elif mode == "not_json":
                self.stream([b"data: {this is not json\n\n", b"data: [DONE]\n\n"])
            elif mode == "html":
                page = b"<html><body>a login page</body></html>"
                self.head("200 OK", {"Content-Type": "text/html", "Content-Length": str(len(page))})
                self.send(page)
            elif mode == "json_not_stream":
                page = json.dumps({"choices": [{"text": "all at once", "index": 0}]}).encode()
                self.head(
                    "200 OK", {"Content-Type": "application/json", "Content-Length": str(len(page))}
                )
                self.send(page)
            elif mode == "huge_line":
                self.head("200 OK", sse)
                self.send(b"data: ")
                self.endless(b"a" * 65536)
            elif mode == "huge_chunk":
                self.head("200 OK", {**sse, "Transfer-Encoding": "chunked"})
                self.send(f"{100 * MB:x}\r\n".encode() + b"data: ")
                self.endless(b"a" * 65536)
            elif mode == "endless_tokens":
                self.head("200 OK", sse)
                i = 0
                end = time.monotonic() + server.give_up_s
                while time.monotonic() < end and not server._stop.is_set():
                    self.send(self.token(i))
                    i += 1
            elif mode == "endless_comments":
                self.head("200 OK", sse)
                self.endless(b": keep-alive\n\n" * 4096)
            elif mode == "cut":
                self.head("200 OK", {**sse, "Transfer-Encoding": "chunked"})
                for data in tokens[:2]:
                    self.send(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            elif mode == "bad_chunked":
                self.head("200 OK", {**sse, "Transfer-Encoding": "chunked"})
                self.send(b"zz-not-hex\r\n" + tokens[0] + b"\r\n")
            elif mode == "error_huge_body":
                size = 100 * MB
                self.head(
                    "500 Internal Server Error",
                    {"Content-Type": "text/plain", "Content-Length": str(size)},
                )
                self.endless(b"E" * 65536, limit=size)
            elif mode == "huge_headers":
                self.send(b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * MB + b"\r\n\r\n")
            elif mode == "gzip":
                self.head("200 OK", {**sse, "Content-Encoding": "gzip"})
                self.send(b"\x1f\x8b" + b"\x00" * 64)
            elif mode == "deep_json":
                self.stream([b"data: " + b"[" * 200_000 + b"\n\n", b"data: [DONE]\n\n"])
            elif mode == "echo_key":
                auth = self.headers_in.get("authorization", "")
                payload = json.dumps({"error": {"message": f"bad key in {auth!r}"}}).encode()
                self.head("401 Unauthorized", {"Content-Length": str(len(payload))})
                self.send(payload)

    return Handler


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--mode", default="ok", choices=STREAM_MODES)
    parser.add_argument("--models", default="ok", choices=MODELS_MODES)
    parser.add_argument("--child", action="store_true")
    args, _ = parser.parse_known_args(argv)
    if args.child:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print(f"child-pid {child.pid}", flush=True)
    with HostileServer(args.mode, models=args.models, host=args.host, port=args.port):
        print(f"hostile server ready on {args.host}:{args.port} ({args.mode})", flush=True)
        while True:
            time.sleep(1)


if __name__ == "__main__":
    _main()
