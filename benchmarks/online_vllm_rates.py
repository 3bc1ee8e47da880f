"""Energy of ``vllm serve`` under load at several request rates (issue 20), one server for all.

llem starts ``vllm serve`` from an experiment's vLLM fields (``server_launch`` +
``ManagedServer``), then measures each rate with ``run_online`` against that endpoint: idle
baseline (server up, idle), warmup requests, the load on a seeded Poisson schedule inside the
NVML energy window. Prefix caching is off so that every rate prefills the same prompts afresh.

    python benchmarks/online_vllm_rates.py --model .devout/llama8b --rates 1,4,16,64,inf \\
        --n 400 --n-at 1=60,4=120,16=240 --out .devout/online

Writes ``<out>/rate-<r>/result.json`` per rate, ``<out>/server.log``, ``<out>/curve.png``,
``<out>/prompts.jsonl`` (the prompts, for the offline reference run of the ``inf`` point:
``benchmarks/configs/online_offline_reference.yaml``) and prints the markdown table of ``report.online_curve`` (J/request, J/token raw and adjusted,
mean W, TTFT/ITL p50/p99, goodput).
"""

from __future__ import annotations

import argparse
import json
import random
import string
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llenergymeasure.config.models import ExperimentConfig


def make_prompts(n: int, length: int, seed: int) -> list[str]:
    """``n`` distinct prompts of ``length`` characters (one token a byte with llem's tokenizer)."""
    rng = random.Random(seed)
    letters = string.ascii_lowercase + " "
    return [f"{i:06d} " + "".join(rng.choices(letters, k=length - 7)) for i in range(n)]


def experiment_fields(model: str, n: int, max_tokens: int, max_num_seqs: int) -> dict[str, Any]:
    """The experiment fields every rate shares: ``vllm serve`` of ``model``, forced lengths."""
    return {
        "model": model,
        "backend": "vllm",
        "precision": "bf16",
        "n": n,
        "max_new_tokens": max_tokens,
        "decoder": {"ignore_eos": True},
        "vllm": {"max_num_seqs": max_num_seqs, "enable_prefix_caching": False},
        "mode": "online",
    }


def rate_config(
    base: dict[str, Any],
    endpoint: str,
    rate: str,
    n: int,
    *,
    n_warmup: int,
    ttft_ms: float,
    tpot_ms: float,
) -> ExperimentConfig:
    """The ``ExperimentConfig`` of one rate (``"inf"`` or a number) against the started server.

    ``online.continuous_usage`` is left to its default, on for ``backend: vllm``: every chunk
    then carries the running token count, so TTFT and ITL see tokens that decode to no text.
    """
    from llenergymeasure.config.models import ExperimentConfig

    return ExperimentConfig(
        **{**base, "n": n},
        online={
            "endpoint": endpoint,
            "served_model_name": base["model"],
            # the config takes a number or "inf", not the string "16"
            "request_rate": rate if rate == "inf" else float(rate),
            "n_warmup_requests": n_warmup,
            "seed": 0,
            "slo": {"ttft_ms": ttft_ms, "tpot_ms": tpot_ms},
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--rates", default="1,4,16,inf")
    parser.add_argument("--n", type=int, default=200, help="requests per rate")
    parser.add_argument(
        "--n-at",
        default="",
        metavar="RATE=N,...",
        help="requests at particular rates (e.g. 1=60,4=120: a slow rate's window is n / rate)",
    )
    parser.add_argument("--input-len", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--baseline-s", type=float, default=5.0)
    parser.add_argument("--ttft-ms", type=float, default=1000.0)
    parser.add_argument("--tpot-ms", type=float, default=50.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from llenergymeasure.config.models import ExperimentConfig
    from llenergymeasure.energy.baseline import measure_idle_baseline
    from llenergymeasure.energy.nvml_backend import NvmlEnergyBackend
    from llenergymeasure.energy.sampler import EnergySampler
    from llenergymeasure.energy.sensors import NvmlSensor
    from llenergymeasure.exceptions import ConfigError
    from llenergymeasure.online.run import run_online
    from llenergymeasure.online.run_result import OnlineRunResult
    from llenergymeasure.online.server import ManagedServer, free_port, server_launch
    from llenergymeasure.report.online_curve import (
        online_curve_markdown,
        online_curve_points,
        plot_online_curve,
    )

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n_at = {r: args.n for r in args.rates.split(",")}
    for item in filter(None, args.n_at.split(",")):
        rate, _, n = item.partition("=")
        if rate not in n_at or not n.isdigit():
            parser.error(f"--n-at {item!r}: expected RATE=N with RATE one of --rates")
        n_at[rate] = int(n)
    n_warmup = 8
    n_max = max(n_at.values())
    prompts = make_prompts(n_max + n_warmup, args.input_len, seed=0)
    # the same prompts for the offline reference run (configs/online_offline_reference.yaml)
    with (out / "prompts.jsonl").open("w") as f:
        f.writelines(json.dumps({"prompt": p}) + "\n" for p in prompts)
    base = experiment_fields(args.model, args.n, args.max_tokens, args.max_num_seqs)
    port = free_port()
    launch = server_launch(
        ExperimentConfig(**base, online={"server": {"port": port}}), host="127.0.0.1", port=port
    )
    print("server:", " ".join(launch.argv), flush=True)
    sensor = NvmlSensor()
    # 100 ms power polling beside the counter: each window's counter vs poll (issue 7's check)
    sampler = EnergySampler(sensor, interval_ms=100)
    results = []
    t_start = time.perf_counter()
    with (
        sampler,
        ManagedServer(
            launch.argv,
            host="127.0.0.1",
            port=port,
            log_path=out / "server.log",
            startup_timeout_s=900,
            env=launch.env,
        ) as server,
    ):
        print(f"server ready after {time.perf_counter() - t_start:.0f} s", flush=True)
        for rate, n in n_at.items():
            done = out / f"rate-{rate}" / "result.json"
            if done.exists():  # a sweep cut by a deadline resumes after its finished rates
                print(f"rate {rate}: kept from {done}", flush=True)
                results.append(OnlineRunResult.model_validate_json(done.read_text()))
                continue
            config = rate_config(
                base,
                server.base_url,
                rate,
                n,
                n_warmup=n_warmup,
                ttft_ms=args.ttft_ms,
                tpot_ms=args.tpot_ms,
            )
            result = run_online(
                config,
                prompts[:n],
                output_dir=out / f"rate-{rate}",
                energy=NvmlEnergyBackend(sensor=sensor, sampler=sampler),
                measure_baseline=lambda: measure_idle_baseline(sensor, args.baseline_s),
                warmup_prompts=prompts[n_max:],
            )
            (out / f"rate-{rate}").mkdir(parents=True, exist_ok=True)
            (out / f"rate-{rate}" / "result.json").write_text(result.model_dump_json(indent=1))
            results.append(result)
            point = online_curve_points([result])[0]
            print(online_curve_markdown([point]).splitlines()[-1], result.warnings, flush=True)
    print()
    print(online_curve_markdown(online_curve_points(results)))
    try:
        plot_online_curve(online_curve_points(results), out / "curve.png")
    except ConfigError as exc:  # no matplotlib on the machine: the table is enough
        print(f"no figure: {exc}")


if __name__ == "__main__":
    main()
