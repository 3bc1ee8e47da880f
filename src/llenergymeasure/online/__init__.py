"""Online mode: measure an OpenAI-compatible server under a request load (issue 20).

Layer: this package sits on the harness floor. It imports from ``config``, ``energy``,
``results`` and ``exceptions`` only; ``harness.online`` measures an online experiment through it
(``harness.measure`` dispatches ``mode: online`` there). Modules:

- ``arrivals``: seeded request send times (poisson, constant, gamma, all-at-once);
- ``client``: a standard-library streaming client for ``/v1/completions`` and
  ``/v1/chat/completions`` that times every streamed chunk;
- ``load``: the asyncio load driver (warmup, schedule, concurrency cap, window);
- ``metrics``: latency percentiles, goodput against SLOs, energy per request/token;
- ``server``: command lines of the engines' own servers and a process-group launcher;
- ``run``: one online measurement composed from the above and an energy backend.
"""
