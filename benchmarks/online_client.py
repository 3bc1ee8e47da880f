"""Online client accuracy: llem's streaming client beside a bare reference client (CPU).

Run from the repository root:

    python benchmarks/online_client.py [--rates 5 20 50 100 200] [--seconds 3] [--no-write]

A local streaming server (a separate process: asyncio streams, HTTP/1.1 with keep-alive,
chunked SSE) answers every request with ``--chunks`` one-token chunks, the first after
``--ttft-ms`` and then one every ``--gap-ms``, and records the ``time.perf_counter`` time at which
it wrote each chunk (``perf_counter`` is the system-wide monotonic clock on Linux, so the
client's and the server's times share one origin). At each request rate, two clients send the
same constant-rate schedule for ``--seconds`` seconds, one after the other:

- ``llem``: ``OpenAIStreamClient`` (httpx on aiohttp's transport, httpx-sse, pooled) through
  the load driver ``drive_load``, exactly as an online run sends its load;
- ``llem (httpx transport)``: the same with httpx's own transport (httpcore, h11) in place of
  aiohttp's, to show why llem uses the latter;
- ``reference``: a bare asyncio-streams client, one connection a request, that stamps each read
  and splits events on blank lines without parsing anything.

For every streamed chunk, its lag is (client's arrival time - server's write time). The TTFT
error is the lag of the first chunk (what a client adds to the true TTFT); the ITL error is the
change of lag between consecutive chunks (what it adds to, or takes from, an inter-token gap).
The table gives their median and 99th percentile, the achieved send rate and the client's CPU
time, and is written to the ``## Online client accuracy (issue 27, CPU)`` section of
BENCHMARKS.md. The machine's load average is shown, since other work on a shared CPU shows up
in both clients' lags.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _markdown import add_section_options, num, publish

TITLE = "Online client accuracy (issue 27, CPU)"
REPRODUCE = "python benchmarks/online_client.py"

# ─── the server (runs in its own process) ──────────────────────────────────────────────────


async def _serve(port: int, chunks: int, ttft_s: float, gap_s: float) -> None:
    sent: dict[str, list[float]] = {}

    async def stream(writer: asyncio.StreamWriter, prompt: str, keep_alive: bool) -> None:
        head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        head += "Transfer-Encoding: chunked\r\n"
        head += "Connection: keep-alive\r\n\r\n" if keep_alive else "Connection: close\r\n\r\n"
        writer.write(head.encode())
        times = sent.setdefault(prompt, [])
        await asyncio.sleep(ttft_s)
        for i in range(chunks):
            last = i == chunks - 1
            choice = {"index": 0, "text": f"t{i} ", "finish_reason": "length" if last else None}
            event = f"data: {json.dumps({'choices': [choice]})}\n\n".encode()
            times.append(time.perf_counter())
            writer.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
            await writer.drain()
            if not last:
                await asyncio.sleep(gap_s)
        done = b"data: [DONE]\n\n"
        writer.write(f"{len(done):x}\r\n".encode() + done + b"\r\n0\r\n\r\n")
        await writer.drain()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                keep_alive = headers.get("connection", "").lower() != "close"
                if method == "GET" and path == "/_sent":
                    payload = json.dumps(sent).encode()
                    sent.clear()
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
                        + payload
                    )
                elif method == "GET":
                    writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{"data":[]}')
                else:
                    await stream(writer, json.loads(body)["prompt"], keep_alive)
                await writer.drain()
                if not keep_alive:
                    return
        except (ConnectionError, OSError):
            return
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


# ─── the reference client ──────────────────────────────────────────────────────────────────


async def _reference_request(port: int, prompt: str, max_tokens: int) -> tuple[float, list[float]]:
    send = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = json.dumps({"model": "m", "prompt": prompt, "max_tokens": max_tokens, "stream": True})
    writer.write(
        (
            "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}"
        ).encode()
    )
    arrivals: list[float] = []
    buffer = b""
    try:
        while True:
            data = await reader.read(65536)
            now = time.perf_counter()
            if not data:
                break
            buffer += data
            *events, buffer = buffer.split(b"\n\n")
            for event in events:
                if b'"text"' in event:
                    arrivals.append(now)
            if b"[DONE]" in data:
                break
    finally:
        writer.close()
    return send, arrivals


async def _reference_load(
    port: int, prompts: list[str], offsets: list[float], max_tokens: int
) -> tuple[list[tuple[float, list[float]]], float, float | None]:
    from llenergymeasure.online.load import _p99, _probe_loop

    cpu0 = time.process_time()
    t0 = time.perf_counter()
    lags: list[float] = []
    probe = asyncio.create_task(_probe_loop(lags))  # the same event-loop probe as llem's driver
    tasks = []
    for prompt, offset in zip(prompts, offsets, strict=True):
        delay = t0 + offset - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_reference_request(port, prompt, max_tokens)))
    results = list(await asyncio.gather(*tasks))
    probe.cancel()
    return results, time.process_time() - cpu0, _p99(lags)


# ─── measuring ─────────────────────────────────────────────────────────────────────────────


@dataclass
class Row:
    client: str
    rate: float
    achieved: float | None
    n_ok: int
    n: int
    ttft_err_ms: tuple[float, float] | None
    itl_err_ms: tuple[float, float] | None
    cpu_s: float
    loop_lag_p99_s: float | None


def _p50_p99(values: list[float]) -> tuple[float, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def _row(
    client: str,
    rate: float,
    results: list[tuple[str, float, list[float]]],
    sent: dict[str, list[float]],
    cpu_s: float,
    chunks: int,
    loop_lag_p99_s: float | None,
) -> Row:
    ttft_err: list[float] = []
    itl_err: list[float] = []
    ok = 0
    for prompt, _, arrivals in results:
        writes = sent.get(prompt, [])
        if len(arrivals) != chunks or len(writes) != chunks:
            continue
        ok += 1
        lags = [(a - w) * 1000 for a, w in zip(arrivals, writes, strict=True)]
        ttft_err.append(lags[0])
        itl_err += [abs(lags[i + 1] - lags[i]) for i in range(len(lags) - 1)]
    sends = sorted(send for _, send, _ in results)
    span = sends[-1] - sends[0]
    return Row(
        client=client,
        rate=rate,
        achieved=(len(sends) - 1) / span if len(sends) > 1 and span > 0 else None,
        n_ok=ok,
        n=len(results),
        ttft_err_ms=_p50_p99(ttft_err),
        itl_err_ms=_p50_p99(itl_err),
        cpu_s=cpu_s,
        loop_lag_p99_s=loop_lag_p99_s,
    )


def _sent(port: int) -> dict[str, list[float]]:
    from llenergymeasure.online.http import http_get

    _, body = http_get(f"http://127.0.0.1:{port}/_sent", timeout_s=30, max_bytes=1 << 28)
    return {k: list(v) for k, v in json.loads(body).items()}


def _httpx_own_transport(timeout_s: float, url: str) -> object:
    """llem's client pool as it would be on httpx's own transport (httpcore + h11)."""
    import httpx

    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout_s),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=1024),
        trust_env=False,
    )


CLIENTS = ("llem", "llem (httpx transport)", "reference")


def measure(rate: float, seconds: float, port: int, chunks: int, client: str, tag: str) -> Row:
    from unittest import mock

    from llenergymeasure.online import client as client_module
    from llenergymeasure.online.client import OpenAIStreamClient
    from llenergymeasure.online.load import drive_load
    from llenergymeasure.online.records import StreamRequest

    n = max(10, round(rate * seconds))
    prompts = [f"{tag} {client} {rate:g} {i}" for i in range(n)]
    offsets = [i / rate for i in range(n)]
    if client.startswith("llem"):
        factory = client_module.async_client if client == "llem" else _httpx_own_transport
        with mock.patch.object(client_module, "async_client", factory):
            load = drive_load(
                OpenAIStreamClient(f"http://127.0.0.1:{port}", "m", include_usage=False),
                [StreamRequest(p, chunks) for p in prompts],
                offsets,
            )
        results = [(prompts[r.index], r.send_time_s, list(r.chunk_times_s)) for r in load.records]
        cpu, loop_lag = load.client_cpu_s, load.loop_lag_p99_s
    else:
        ref, cpu, loop_lag = asyncio.run(_reference_load(port, prompts, offsets, chunks))
        results = [(p, send, arrivals) for p, (send, arrivals) in zip(prompts, ref, strict=True)]
    return _row(client, rate, results, _sent(port), cpu, chunks, loop_lag)


def render(rows: list[Row], args: argparse.Namespace, load: tuple[float, float]) -> str:
    lines = [
        "| client | rate asked (req/s) | achieved (req/s) | complete | TTFT error p50 / p99 (ms) "
        "| ITL error p50 / p99 (ms) | event-loop lag p99 (ms) | client CPU (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ttft = (
            "n/a" if r.ttft_err_ms is None else f"{r.ttft_err_ms[0]:.2f} / {r.ttft_err_ms[1]:.2f}"
        )
        itl = "n/a" if r.itl_err_ms is None else f"{r.itl_err_ms[0]:.2f} / {r.itl_err_ms[1]:.2f}"
        lines.append(
            f"| {r.client} | {r.rate:g} | {num(r.achieved, '.1f')} | {r.n_ok}/{r.n} | {ttft} "
            f"| {itl} | {num(None if r.loop_lag_p99_s is None else r.loop_lag_p99_s * 1000, '.2f')} "
            f"| {r.cpu_s:.2f} |"
        )
    import httpx

    cpu = _cpu_model()
    head = (
        f"Measured {dt.date.today().isoformat()} on {cpu} ({os.cpu_count()} cores), Python "
        f"{platform.python_version()}, httpx {httpx.__version__}; load average "
        f"{load[0]:.2f} before and {load[1]:.2f} after (a CPU shared with other work). "
        f"Server: {args.chunks} one-token chunks a request, first after {args.ttft_ms:g} ms, "
        f"then every {args.gap_ms:g} ms; {args.seconds:g} s of constant-rate load per row. "
        "TTFT error: client arrival - server write of the first chunk; ITL error: |change of "
        "that lag between consecutive chunks|. Event-loop lag: how late the client's loop woke "
        "(the probe llem's driver runs; it warns above 5 ms). `complete`: requests whose every "
        f"chunk was seen. Reproduce: `{REPRODUCE}`."
    )
    return head + "\n\n" + "\n".join(lines) + "\n"


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rates", type=float, nargs="+", default=[5, 20, 50, 100, 200])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--chunks", type=int, default=32)
    parser.add_argument("--ttft-ms", type=float, default=20.0)
    parser.add_argument("--gap-ms", type=float, default=10.0)
    parser.add_argument("--clients", nargs="+", choices=CLIENTS, default=list(CLIENTS))
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the server process
    add_section_options(parser)
    args = parser.parse_args(argv)
    if args.serve is not None:
        asyncio.run(_serve(args.serve, args.chunks, args.ttft_ms / 1000, args.gap_ms / 1000))
        return
    from llenergymeasure.online.server import free_port

    port = free_port()
    server = subprocess.Popen(
        [
            *(sys.executable, __file__, "--serve", str(port), "--chunks", str(args.chunks)),
            *("--ttft-ms", str(args.ttft_ms), "--gap-ms", str(args.gap_ms)),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        load_before = os.getloadavg()[0]
        rows: list[Row] = []
        for k, rate in enumerate(args.rates):
            # alternate who goes first, so a drift in the machine's load favours no client
            order = list(args.clients) if k % 2 == 0 else list(reversed(args.clients))
            done = {c: measure(rate, args.seconds, port, args.chunks, c, "b") for c in order}
            rows += [done[c] for c in args.clients]
        load_after = os.getloadavg()[0]
    finally:
        server.terminate()
        server.wait(timeout=30)
    body = render(rows, args, (load_before, load_after))
    if getattr(args, "extra", None):
        body += "\n" + args.extra.read_text()
    publish(body, TITLE, args.no_write)


if __name__ == "__main__":
    main()
