"""A fake OpenAI-compatible streaming server on loopback, for the online-mode tests.

In-process: ``FakeOpenAIServer`` (stdlib ``http.server`` in a thread) serves
``/v1/completions`` and ``/v1/chat/completions`` as SSE with a controllable delay before the
first token and between tokens, an optional ``usage`` chunk, chunked or close-delimited bodies,
and failures chosen by the prompt:

- ``FAIL:<status>``: that HTTP status with an OpenAI-style JSON error body;
- ``HANG``: nothing is sent for 30 s (for client timeouts);
- ``CUT``: two tokens, then the connection is closed without ``[DONE]``;
- ``HTML``: a 200 response that is an HTML page, not SSE;
- ``BADJSON``: a ``data:`` line that is not JSON;
- ``STREAMERR``: one token, then an in-stream ``{"error": ...}`` chunk.

``decode`` gives the text of each output token by position (``"tok "`` by default; ``""`` for a
token that decodes to no text) and ``chunk_sizes`` how many tokens the first chunks merge (then
``tokens_per_chunk`` each). With ``vllm=True`` the chunks follow vLLM 0.26's shapes
(``vllm/entrypoints/openai/{completion,chat_completion}/serving.py``): ``id``/``object``/
``created``/``model``, explicit nulls, a chat role chunk with ``content: ""``, the choice's
``token_ids`` when the request sets ``return_token_ids``, and the cumulative ``usage`` on every
chunk (0 on the role chunk) when ``stream_options`` sets ``include_usage`` and
``continuous_usage_stats``. Without it, those request fields are ignored, as servers without the
extensions do.

It records every request body, its arrival time (``time.perf_counter``) and the largest number
of requests in flight at once.

As a script (the "server" that the launcher tests start)::

    python fake_openai_server.py --port P [--host H] [--startup-delay S] [--ignore-sigterm]
        [--exit-after S] [--no-health] [--child] [--token-delay S]

``--child`` also starts a sleeping child process (to prove the whole group is stopped) and
prints its pid as ``child-pid <pid>``.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # the default 5 would make bursts of connections wait on SYN retries


class FakeOpenAIServer:
    """Configurable fake server; use as a context manager or call ``start``/``stop``."""

    def __init__(
        self,
        *,
        ttft_s: float = 0.0,
        token_delay_s: float = 0.0,
        n_tokens: int | None = None,  # None -> the request's max_tokens
        send_usage: bool = True,  # only when the request asks (stream_options.include_usage)
        usage_tokens: int | None = None,  # report this instead of the true count
        chunked: bool = True,
        tokens_per_chunk: int = 1,
        chunk_sizes: Sequence[int] = (),  # tokens of the first chunks, then tokens_per_chunk
        decode: Callable[[int], str] | None = None,  # token position -> its text ("tok ")
        vllm: bool = False,  # vLLM 0.26 chunk shapes, continuous usage and token_ids
        health: bool = True,
        done_marker: bool = True,  # False: end like transformers serve (finish_reason, no [DONE])
        models: list[str] | None = None,  # ids listed at /v1/models (None: an empty list)
        # no first token until this many requests were in flight at once (60 s hang guard)
        hold_until_in_flight: int | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.ttft_s = ttft_s
        self.token_delay_s = token_delay_s
        self.n_tokens = n_tokens
        self.send_usage = send_usage
        self.usage_tokens = usage_tokens
        self.chunked = chunked
        self.tokens_per_chunk = tokens_per_chunk
        self.chunk_sizes = list(chunk_sizes)
        self.decode = decode if decode is not None else (lambda i: "tok ")
        self.vllm = vllm
        self.health = health
        self.done_marker = done_marker
        self.models = list(models or [])
        self.hold_until_in_flight = hold_until_in_flight
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.arrivals: list[float] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._httpd = _Server((host, port), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeOpenAIServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _enter(self, path: str, body: dict[str, Any]) -> None:
        with self._lock:
            self.arrivals.append(time.perf_counter())
            self.paths.append(path)
            self.bodies.append(body)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def hold(self) -> None:
        """Wait until ``hold_until_in_flight`` requests were in flight at once (if set)."""
        deadline = time.monotonic() + 60.0
        while self.hold_until_in_flight is not None and time.monotonic() < deadline:
            with self._lock:
                if self.max_in_flight >= self.hold_until_in_flight:
                    return
            time.sleep(0.005)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1


def _make_handler(server: FakeOpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            if self.path == "/health" and server.health:
                self._reply(200, b"", "text/plain")
            elif self.path == "/v1/models" and server.health:
                data = [{"id": m, "object": "model"} for m in server.models]
                self._reply(200, json.dumps({"object": "list", "data": data}).encode())
            else:
                self._reply(404, b'{"detail": "Not Found"}')

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length) or b"{}")
            if self.path not in ("/v1/completions", "/v1/chat/completions"):
                self._reply(404, b'{"detail": "Not Found"}')
                return
            server._enter(self.path, body)
            try:
                self._stream(body, chat=self.path.endswith("chat/completions"))
            finally:
                server._leave()

        def _reply(self, status: int, payload: bytes, ctype: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(payload)
            self.close_connection = True

        def _write(self, data: bytes) -> None:
            if server.chunked:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            else:
                self.wfile.write(data)
            self.wfile.flush()

        def _event(self, obj: Any) -> None:
            text = obj if isinstance(obj, str) else json.dumps(obj)
            self._write(f"data: {text}\n\n".encode())

        def _stream(self, body: dict[str, Any], *, chat: bool) -> None:
            prompt = _prompt_of(body)
            if prompt.startswith("FAIL:"):
                status = int(prompt.split(":", 1)[1])
                error = {"error": {"message": f"fake failure {status}", "code": status}}
                self._reply(status, json.dumps(error).encode())
                return
            if prompt == "HANG":
                time.sleep(30)
                return
            if prompt == "HTML":
                self._reply(200, b"<html><body>hello</body></html>", "text/html")
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            if server.chunked:
                self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            options = body.get("stream_options") or {}
            continuous = (
                server.vllm
                and bool(options.get("include_usage"))
                and bool(options.get("continuous_usage_stats"))
            )
            token_ids = server.vllm and bool(body.get("return_token_ids"))
            n_prompt = len(prompt.split())

            def chunk(choice: dict[str, Any], completion_tokens: int) -> dict[str, Any]:
                if not server.vllm:
                    return {"object": "chunk", "choices": [choice]}
                obj = "chat.completion.chunk" if chat else "text_completion"
                out = {"id": "cmpl-1", "object": obj, "created": 0, "model": body.get("model")}
                out["choices"] = [choice]
                if continuous:
                    out["usage"] = {
                        "prompt_tokens": n_prompt,
                        "completion_tokens": completion_tokens,
                        "total_tokens": n_prompt + completion_tokens,
                    }
                return out

            if chat:  # the role-only first chunk real servers send carries no token
                delta: dict[str, Any] = {"role": "assistant"}
                role: dict[str, Any] = {"index": 0, "delta": delta}
                if server.vllm:
                    delta["content"] = ""
                    role.update(logprobs=None, finish_reason=None)
                self._event(chunk(role, 0))
            if prompt == "BADJSON":
                self._write(b"data: this is not json\n\n")
                self._end()
                return
            n = server.n_tokens if server.n_tokens is not None else int(body["max_tokens"])
            if prompt == "CUT":
                n = 2
            server.hold()
            time.sleep(server.ttft_s)
            sent = 0
            sizes = iter(server.chunk_sizes)
            while sent < n:
                k = min(next(sizes, server.tokens_per_chunk), n - sent)
                text = "".join(server.decode(i) for i in range(sent, sent + k))
                ids = list(range(100 + sent, 100 + sent + k))
                sent += k
                last = sent == n and prompt != "CUT"
                choice: dict[str, Any] = {"index": 0}
                if chat:
                    choice["delta"] = {"content": text}
                else:
                    choice["text"] = text
                if server.vllm:
                    choice["logprobs"] = None
                choice["finish_reason"] = "length" if last else None
                if server.vllm:
                    if last or not chat:
                        choice["stop_reason"] = None
                    if not chat:
                        choice["prompt_token_ids"] = None
                    choice["token_ids"] = ids if token_ids else None
                self._event(chunk(choice, sent))
                if prompt == "STREAMERR":
                    self._event({"error": {"message": "engine died"}})
                    self._end()
                    return
                if sent < n:
                    time.sleep(server.token_delay_s)
            if prompt == "CUT":
                if server.chunked:
                    self.wfile.flush()
                return  # close without the terminating chunk or [DONE]
            if server.send_usage and options.get("include_usage"):
                count = server.usage_tokens if server.usage_tokens is not None else n
                usage = {"prompt_tokens": n_prompt, "completion_tokens": count}
                final: dict[str, Any] = {"choices": [], "usage": usage}
                if server.vllm:
                    obj = "chat.completion.chunk" if chat else "text_completion"
                    final = {"id": "cmpl-1", "object": obj, "created": 0, "model": body["model"]}
                    usage["total_tokens"] = n_prompt + count
                    final.update(choices=[], usage=usage)
                self._event(final)
            if server.done_marker:
                self._event("[DONE]")
            self._end()

        def _end(self) -> None:
            if server.chunked:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

    return Handler


def _prompt_of(body: dict[str, Any]) -> str:
    if "messages" in body:
        return str(body["messages"][-1]["content"])
    return str(body.get("prompt", ""))


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--startup-delay", type=float, default=0.0)
    parser.add_argument("--ignore-sigterm", action="store_true")
    parser.add_argument("--exit-after", type=float, default=None)
    parser.add_argument("--no-health", action="store_true")
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--token-delay", type=float, default=0.0)
    args, unknown = parser.parse_known_args(argv)
    print(f"fake server starting, extra args {unknown}", flush=True)
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.child:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print(f"child-pid {child.pid}", flush=True)
    time.sleep(args.startup_delay)
    server = FakeOpenAIServer(
        host=args.host, port=args.port, health=not args.no_health, token_delay_s=args.token_delay
    )
    server.start()
    print(f"fake server ready on {args.host}:{args.port}", flush=True)
    deadline = None if args.exit_after is None else time.monotonic() + args.exit_after
    while deadline is None or time.monotonic() < deadline:
        time.sleep(0.05)
    print("fake server exiting on its own", flush=True)
    sys.exit(3)


if __name__ == "__main__":
    _main()
