"""Seeded request send times for the online load.

``arrival_offsets`` gives the send time of each request relative to the first (which is sent at
0). Inter-arrival gaps are drawn from:

- ``poisson``: exponential with mean ``1 / rate`` (a Poisson process);
- ``constant``: exactly ``1 / rate``;
- ``gamma``: gamma with shape ``burstiness`` and mean ``1 / rate``. Shape 1 is the exponential
  (Poisson); < 1 burstier (higher variance), > 1 more regular. Variance = 1 / (shape * rate^2).

An infinite rate sends every request at 0. The same seed gives the same schedule.
"""

from __future__ import annotations

import math
import random

from llenergymeasure.config.online import ArrivalProcess

__all__ = ["arrival_offsets", "inter_arrival_gaps"]


def inter_arrival_gaps(
    n: int,
    rate: float,
    arrival: ArrivalProcess = "poisson",
    *,
    burstiness: float = 1.0,
    seed: int = 0,
) -> list[float]:
    """``n`` gaps in seconds between consecutive arrivals (all 0 for ``rate = inf``)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if math.isnan(rate) or rate <= 0:
        raise ValueError(f"rate must be > 0 requests per second (or inf), got {rate}")
    if not math.isfinite(burstiness) or burstiness <= 0:
        raise ValueError(f"burstiness must be a finite number > 0, got {burstiness}")
    if math.isinf(rate):
        return [0.0] * n
    mean = 1.0 / rate
    if arrival == "constant":
        return [mean] * n
    rng = random.Random(seed)
    if arrival == "poisson":
        return [rng.expovariate(rate) for _ in range(n)]
    if arrival == "gamma":
        return [rng.gammavariate(burstiness, mean / burstiness) for _ in range(n)]
    raise ValueError(f"unknown arrival process {arrival!r}: use poisson, constant or gamma")


def arrival_offsets(
    n: int,
    rate: float,
    arrival: ArrivalProcess = "poisson",
    *,
    burstiness: float = 1.0,
    seed: int = 0,
) -> list[float]:
    """Send time of each of ``n`` requests in seconds after the first (the first is at 0).

    Request ``i`` is sent ``sum(gaps[:i])`` after the first, so ``n`` requests span
    ``n - 1`` gaps.
    """
    gaps = inter_arrival_gaps(max(n - 1, 0), rate, arrival, burstiness=burstiness, seed=seed)
    offsets = [0.0] if n > 0 else []
    t = 0.0
    for gap in gaps:
        t += gap
        offsets.append(t)
    return offsets
