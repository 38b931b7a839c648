"""Loss-curve plots: the smoothing's values on a hand series, and a layout a person can read."""

import numpy as np
import pytest
from matplotlib.colors import to_rgba

from evaluation.curves import plot_loss_curves, smooth, smoothing_weight


def test_smoothing_is_a_debiased_ema():
    # weight 0.5 on [1, 0, 0]: running sums 0.5, 0.25, 0.125 divided by 1 - 0.5**n = 0.5, 0.75, 0.875
    assert smooth([1.0, 0.0, 0.0], 0.5) == pytest.approx([1.0, 1 / 3, 1 / 7])
    assert smooth([2.0, 2.0, 2.0], 0.9) == pytest.approx([2.0, 2.0, 2.0])  # a constant stays put (no pull to 0)
    assert smooth([3.0, 1.0], 0.0) == [3.0, 1.0]
    assert [smoothing_weight(n) for n in (5, 20, 100, 1000)] == [0.0, 0.0, 0.8, 0.98]


def test_plot_has_smoothed_train_raw_behind_val_points_and_legend_outside(tmp_path):
    steps = list(range(200))
    noisy = [3.0 - step / 100 + (0.5 if step % 2 else -0.5) for step in steps]  # a zigzag around a slope
    runs = [("lora", {"train/loss": (steps, noisy), "val/loss": ([99, 199], [2.2, 1.4])}),
            ("full", {"train/loss": (steps, [value - 0.3 for value in noisy])})]
    figure = plot_loss_curves(runs, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    (axes,) = figure.axes
    lines = axes.get_lines()
    # lora: raw, smoothed, val; full: raw, smoothed
    assert [line.get_label().startswith("_") for line in lines] == [True, False, False, True, False]
    raw, smoothed, val = lines[:3]
    assert raw.get_alpha() < 0.5 and smoothed.get_alpha() is None
    assert list(smoothed.get_ydata()) == pytest.approx(smooth(noisy, 0.9))
    assert np.ptp(np.diff(smoothed.get_ydata()[50:])) < 0.2 < np.ptp(np.diff(noisy[50:]))  # the zigzag is gone
    assert list(val.get_xdata()) == [99, 199] and val.get_marker() == "o"  # a dot per validation
    # one colour per run, shared by its train and val lines
    assert to_rgba(raw.get_color()) == to_rgba(smoothed.get_color()) == to_rgba(val.get_color()) == to_rgba("C0")
    assert to_rgba(lines[4].get_color()) == to_rgba("C1")
    renderer = figure.canvas.get_renderer()
    legend_box = figure.legends[0].get_window_extent(renderer)
    axes_box = axes.get_window_extent(renderer)
    assert legend_box.x0 >= axes_box.x1  # outside, to the right: hides no curve
    assert [text.get_text() for text in figure.legends[0].get_texts()] == [
        "lora train loss (smoothed)", "lora val loss", "full train loss (smoothed)"]
