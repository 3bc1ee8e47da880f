"""Specification of the where-the-joules-go figures (``report.phase_plots``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llenergymeasure.report.phase_plots import plot_phase_bars, plot_request_energy


def assert_real_image(path: Path) -> None:
    """A PNG of a few KB that is not a single colour."""
    import matplotlib.image as mpimg

    assert path.is_file() and path.stat().st_size > 5_000, path
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 400
    rgb = pixels[..., :3].reshape(-1, 3)
    assert float(rgb.std()) > 0.02, f"{path.name} looks blank"
    assert len(np.unique((rgb * 255).astype(np.uint8), axis=0)) > 20


def colour_pixels(path: Path, hex_colour: str) -> int:
    import matplotlib.image as mpimg

    rgb = (mpimg.imread(path)[..., :3] * 255).round().astype(int)
    target = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(rgb - target).max(axis=-1) <= 2).sum())


def test_stacked_phase_bars_draw_both_phases_per_config(tmp_path: Path) -> None:
    out = plot_phase_bars(
        ["#1 batch 1", "#2 batch 8", "#3 no split"],
        [12.0, 40.0, None],
        [88.0, 60.0, None],
        tmp_path / "phases.png",
        methods=["differential", "differential", None],
    )
    assert out == tmp_path / "phases.png"
    assert_real_image(out)
    legend_swatch = 500  # pixels of one legend patch, with margin
    assert colour_pixels(out, "#ef6c00") > 10 * legend_swatch  # prefill bars
    assert colour_pixels(out, "#1e88e5") > 10 * legend_swatch  # decode bars


def test_without_any_split_no_bar_is_drawn(tmp_path: Path) -> None:
    out = plot_phase_bars(["#1"], [None], [None], tmp_path / "none.png")
    assert colour_pixels(out, "#ef6c00") < 500  # only the legend swatch


def test_phase_bars_need_one_value_per_label(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="same length"):
        plot_phase_bars(["a", "b"], [1.0], [2.0, 3.0], tmp_path / "x.png")


def test_request_energy_histogram_with_the_prompt_length_scatter(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    prompt = rng.integers(50, 2000, size=64)
    energy = 0.01 * prompt + rng.normal(5.0, 0.5, size=64)
    out = plot_request_energy(
        energy.tolist(),
        tmp_path / "requests.png",
        prompt_tokens=prompt.tolist(),
        note="confidence high: sampling interval 1.0 ms vs median step 25.0 ms",
    )
    assert_real_image(out)
    assert colour_pixels(out, "#ef6c00") > 100  # the scatter


def test_request_energy_histogram_alone(tmp_path: Path) -> None:
    out = plot_request_energy([1.0, 1.2, 0.9, 3.0], tmp_path / "hist.png")
    assert_real_image(out)
    assert colour_pixels(out, "#ef6c00") == 0


def test_request_energy_needs_data_and_matching_lengths(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no per-request energy"):
        plot_request_energy([], tmp_path / "x.png")
    with pytest.raises(ValueError, match="one entry per request"):
        plot_request_energy([1.0], tmp_path / "x.png", prompt_tokens=[1, 2])
