"""Online mode: measure an OpenAI-compatible server under a request load (issue 20).

Layer: this package sits on the harness floor. It imports from ``config``, ``datasets``,
``energy``, ``engines``, ``results``, ``exceptions`` and floor-0 modules only (never the
harness); ``harness.online`` measures an online experiment through it with the harness's own
tools (``harness.measure`` dispatches ``mode: online`` there). Its config and result models
are ``config.online`` and ``results.online``; ``docs/architecture.md`` lists every piece.
Modules:

- ``preflight``: what must hold before an online run starts (server program, API key,
  endpoint check);
- ``gpus``: which GPUs an online run meters (``online.gpus``) for NVML and Zeus;
- ``server``: command lines of the engines' own servers and a process-group launcher;
  ``server_guard``: the parent-death signal and watchdog that keep a server from outliving llem;
- ``arrivals``: seeded request send times (poisson, constant, gamma, all-at-once);
- ``records``: what a request is (``StreamRequest``) and what happened to it
  (``RequestRecord``);
- ``http``: the pooled httpx client, bounded pre-flight GETs, a server's model list;
- ``client``: the streaming client for ``/v1/completions`` and ``/v1/chat/completions`` that
  times every streamed chunk;
- ``load``: the asyncio load driver (warmup, schedule, concurrency cap, window);
- ``metrics``: latency percentiles, goodput against SLOs, energy per request/token;
- ``run``: one online measurement composed from the above and an energy backend;
  ``run_result``: what it measured (``OnlineRunResult``);
- ``measured_run``: the run as the harness measures it (idle baseline, sampler, files kept).
"""
