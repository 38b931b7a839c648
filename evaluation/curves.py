"""Loss curves of runs: read from their TensorBoard event files, drawn into one PNG.

Used by ``sft compare`` (several runs) and ``sft report`` (the training run behind the tuned side).
"""

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

LOSS_CURVES = {"train/loss_step": "-", "val/loss": "--"}  # tag -> line style


def read_loss_curves(run_dir: Path) -> dict[str, tuple[list[int], list[float]]]:
    """tag -> (steps, values) for each loss tag the run's event files hold."""
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})  # 0 = keep every point
    events.Reload()
    logged = set(events.Tags()["scalars"])
    return {
        tag: ([event.step for event in events.Scalars(tag)], [event.value for event in events.Scalars(tag)])
        for tag in LOSS_CURVES if tag in logged
    }


def plot_loss_curves(runs: list[tuple[str, dict[str, tuple[list[int], list[float]]]]], path: Path) -> None:
    """(run label, tag -> (steps, values)) pairs, one colour per run, drawn into a PNG at ``path``."""
    # Figure without pyplot: no global backend to set, nothing left open between calls.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for colour_index, (run, curves) in enumerate(runs):
        for tag, (steps, values) in curves.items():
            axes.plot(steps, values, LOSS_CURVES[tag], color=f"C{colour_index}", label=f"{run} {tag}",
                      marker="o" if tag == "val/loss" else None, markersize=4)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, format="png")
