"""Loss curves of runs: read from their TensorBoard event files, drawn into one PNG.

Used by ``sft compare`` (several runs) and ``sft report`` (the training run behind the tuned side).
Drawn to be read at a glance: one colour per run, shared by its train and validation lines; the
step loss smoothed (an exponential moving average, debiased like TensorBoard's slider) over the
raw steps drawn faint behind it; a dot per validation; the legend outside the axes, so no curve
is ever hidden behind it.
"""

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

TRAIN_LOSS, VAL_LOSS = "train/loss", "val/loss"
LOSS_CURVES = (TRAIN_LOSS, VAL_LOSS)
EARLIER_TAGS = {"train/loss_step": TRAIN_LOSS}  # runs written before the step loss was logged as train/loss
RAW_ALPHA = 0.25  # the unsmoothed step loss, behind its smoothed line
POINTS_PER_SMOOTHING_WINDOW = 20  # a series of n points is smoothed over about n / 20 of them


def read_loss_curves(run_dir: Path) -> dict[str, tuple[list[int], list[float]]]:
    """tag -> (steps, values) for each loss tag the run's event files hold."""
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})  # 0 = keep every point
    events.Reload()
    logged = set(events.Tags()["scalars"])
    curves = {EARLIER_TAGS.get(tag, tag): tag for tag in (*EARLIER_TAGS, *LOSS_CURVES) if tag in logged}
    return {
        name: ([event.step for event in events.Scalars(tag)], [event.value for event in events.Scalars(tag)])
        for name, tag in curves.items()
    }


def smoothing_weight(num_points: int) -> float:
    """An EMA weight that averages over about num_points / 20 points: 0 (no smoothing) below 20 points.

    >>> smoothing_weight(10), smoothing_weight(100), smoothing_weight(1000)
    (0.0, 0.8, 0.98)
    """
    window = max(1.0, num_points / POINTS_PER_SMOOTHING_WINDOW)
    return round(1.0 - 1.0 / window, 6)


def smooth(values: list[float], weight: float) -> list[float]:
    """Exponential moving average, debiased as TensorBoard's: the first point is the first value, and
    early points are not pulled towards zero.

    >>> [round(v, 4) for v in smooth([1.0, 0.0, 0.0], 0.5)]
    [1.0, 0.3333, 0.1429]
    """
    smoothed, running, count = [], 0.0, 0
    for value in values:
        count += 1
        running = weight * running + (1 - weight) * value
        smoothed.append(running / (1 - weight**count) if weight > 0 else value)
    return smoothed


def plot_loss_curves(runs: list[tuple[str, dict[str, tuple[list[int], list[float]]]]], path: Path):
    """(run label, tag -> (steps, values)) pairs, one colour per run, drawn into a PNG at ``path``.

    Returns the figure (already saved), for tests to measure its layout."""
    # Figure without pyplot: no global backend to set, nothing left open between calls.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 5), dpi=100, layout="constrained")  # constrained: room for the outside legend
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for colour_index, (run, curves) in enumerate(runs):
        colour = f"C{colour_index}"
        if TRAIN_LOSS in curves:
            steps, losses = curves[TRAIN_LOSS]
            axes.plot(steps, losses, "-", color=colour, alpha=RAW_ALPHA, linewidth=1)
            axes.plot(steps, smooth(losses, smoothing_weight(len(losses))), "-", color=colour, linewidth=2,
                      label=f"{run} train loss (smoothed)")
        if VAL_LOSS in curves:
            steps, losses = curves[VAL_LOSS]
            axes.plot(steps, losses, "--", color=colour, marker="o", markersize=5, label=f"{run} val loss")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3)
    figure.legend(loc="outside right upper", fontsize="small")
    figure.savefig(path, format="png")
    return figure
