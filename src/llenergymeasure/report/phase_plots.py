"""Report figures of where the joules go (issue 16), from plain lists; each written as a PNG.

- ``plot_phase_bars``: one stacked bar per config, prefill below decode, share of each.
- ``plot_request_energy``: histogram of per-request energy, and energy against prompt length
  where prompt lengths are given.

matplotlib is imported only when a figure is drawn (``require_matplotlib``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from llenergymeasure.report.plots import require_matplotlib, save_figure

__all__ = ["plot_phase_bars", "plot_request_energy"]

PREFILL_COLOUR = "#ef6c00"
DECODE_COLOUR = "#1e88e5"


def _usable(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def plot_phase_bars(
    labels: Sequence[str],
    prefill_j: Sequence[float | None],
    decode_j: Sequence[float | None],
    path: Path,
    *,
    quantity: str = "energy per request (J)",
    methods: Sequence[str | None] | None = None,
    title: str = "Prefill vs decode energy per config",
) -> Path:
    """Horizontal stacked bars, one per config: prefill then decode, labelled with shares.

    ``prefill_j``/``decode_j`` are what the bars show (``quantity`` names it); a config with
    ``None`` in either says "no split" instead of a bar. ``methods`` (e.g. "differential",
    "time_resolved") are shown beside the labels.
    """
    if not (len(labels) == len(prefill_j) == len(decode_j)):
        raise ValueError("labels, prefill_j and decode_j must have the same length")
    if methods is not None and len(methods) != len(labels):
        raise ValueError("methods must have one entry per label")
    plt = require_matplotlib()
    n = len(labels)
    fig, ax = plt.subplots(figsize=(10, 1.8 + 0.55 * max(n, 1)), layout="constrained")
    ys = list(range(n))
    for y, pre, dec in zip(ys, prefill_j, decode_j, strict=True):
        if pre is None or dec is None or not (_usable(pre) and _usable(dec)):
            ax.text(0, y, "  no prefill/decode split", va="center", fontsize=8.5, color="#777777")
            continue
        ax.barh(y, pre, color=PREFILL_COLOUR, height=0.6)
        ax.barh(y, dec, left=pre, color=DECODE_COLOUR, height=0.6)
        total = pre + dec
        if total > 0:
            ax.annotate(
                f"{total:.4g}  (prefill {pre / total:.0%}, decode {dec / total:.0%})",
                (total, y),
                xytext=(6, 0),
                textcoords="offset points",
                va="center",
                fontsize=8.5,
            )
    tick_labels = [
        label if methods is None or methods[i] is None else f"{label}  [{methods[i]}]"
        for i, label in enumerate(labels)
    ]
    ax.set_yticks(ys, tick_labels)
    ax.set_ylim(n - 0.5, -0.5)  # first config on top
    ax.set_xlabel(quantity)
    ax.set_xlim(left=0)
    ax.margins(x=0.35)
    ax.grid(axis="x", alpha=0.3)
    from matplotlib.patches import Patch

    ax.legend(
        handles=[
            Patch(color=PREFILL_COLOUR, label="prefill (incl. first token)"),
            Patch(color=DECODE_COLOUR, label="decode"),
        ],
        loc="lower right",
        bbox_to_anchor=(1.0, 1.0),
        ncol=2,
        frameon=False,
        fontsize=8.5,
    )
    ax.set_title(title, fontsize=10, loc="left")
    return save_figure(fig, path)


def plot_request_energy(
    energies_j: Sequence[float],
    path: Path,
    *,
    prompt_tokens: Sequence[int] | None = None,
    title: str = "Energy per request",
    note: str = "",
) -> Path:
    """Histogram of per-request energy; with ``prompt_tokens``, also energy vs prompt length.

    ``note`` (e.g. the attribution's confidence and why) is printed under the title.
    """
    if not energies_j:
        raise ValueError("no per-request energy to plot")
    if prompt_tokens is not None and len(prompt_tokens) != len(energies_j):
        raise ValueError("prompt_tokens must have one entry per request")
    plt = require_matplotlib()
    panels = 2 if prompt_tokens is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels + 1, 4.4), layout="constrained")
    ax_hist = axes[0] if panels == 2 else axes
    values = [float(e) for e in energies_j]
    bins = max(5, min(40, int(math.sqrt(len(values))) + 1))
    ax_hist.hist(values, bins=bins, color=DECODE_COLOUR, alpha=0.8, edgecolor="white")
    mean = sum(values) / len(values)
    ax_hist.axvline(mean, color="black", linestyle="--", linewidth=1.2, label=f"mean {mean:.4g} J")
    ax_hist.set_xlabel("energy per request (J)")
    ax_hist.set_ylabel("requests")
    ax_hist.legend(fontsize=8.5)
    ax_hist.grid(axis="y", alpha=0.3)
    if prompt_tokens is not None:
        ax_sc = axes[1]
        ax_sc.scatter(list(prompt_tokens), values, s=16, color=PREFILL_COLOUR)
        ax_sc.set_xlabel("prompt length (tokens)")
        ax_sc.set_ylabel("energy per request (J)")
        ax_sc.grid(alpha=0.3)
    fig.suptitle(title + (f"\n{note}" if note else ""), fontsize=10, x=0.01, ha="left")
    return save_figure(fig, path)
