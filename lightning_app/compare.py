"""``sft compare RUN_DIR [RUN_DIR ...] --out DIR``: several runs side by side.

Each RUN_DIR is a run's version folder (``runs/<name>/version_N``) holding the ``summary.json``
that the ``RunSummary`` callback wrote and the TensorBoard event files of the run. Written into
``--out``:

- ``comparison.md``: one Markdown table, one row per run (the columns of ``summary.md``);
- ``loss_curves.png``: ``train/loss_step`` (solid) and ``val/loss`` (dashed, dots) against the
  optimizer step, one colour per run.
"""

import argparse
import json
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from callbacks.run_summary import summary_table

LOSS_CURVES = {"train/loss_step": "-", "val/loss": "--"}  # tag -> line style


def compare_runs(run_dirs: list[str], out_dir: str) -> Path:
    """Write comparison.md and loss_curves.png into ``out_dir``; returns the Markdown file's path."""
    summaries = [read_summary(Path(run_dir)) for run_dir in run_dirs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    curves_path = out / "loss_curves.png"
    # A list, not a dict: two save dirs may both hold a run called lora/version_0.
    curves = [(summary["run"], read_loss_curves(Path(run_dir))) for summary, run_dir in zip(summaries, run_dirs)]
    plot_loss_curves(curves, curves_path)
    markdown_path = out / "comparison.md"
    markdown_path.write_text(comparison_markdown(summaries, curves_path.name), encoding="utf-8")
    return markdown_path


def read_summary(run_dir: Path) -> dict:
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(
            f"{summary_path} does not exist: pass a run's version folder (runs/<name>/version_N) from a fit "
            "that ran with the RunSummary callback, which writes summary.json when the fit ends"
        )
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    summary["run"] = summary.get("run") or run_dir.name
    return summary


def comparison_markdown(summaries: list[dict], curves_file: str) -> str:
    return "\n".join(["# Run comparison", "", summary_table(summaries), "", f"![loss curves]({curves_file})", ""])


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


def compare_command(argv: list[str]) -> None:
    """sft compare RUN_DIR [RUN_DIR ...] --out DIR."""
    parser = argparse.ArgumentParser(prog="sft compare", description="Compare runs: a Markdown table and loss curves.")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a run's folder: runs/<name>/version_N")
    parser.add_argument("--out", required=True, help="folder to write comparison.md and loss_curves.png into")
    args = parser.parse_args(argv)
    print(compare_runs(args.run_dirs, args.out))
