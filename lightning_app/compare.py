"""``sft compare RUN_DIR [RUN_DIR ...] --out DIR``: several runs side by side.

Each RUN_DIR is a run's version folder (``runs/<name>/fit``) holding the ``summary.json``
that the ``RunSummary`` callback wrote and the TensorBoard event files of the run. Written into
``--out``:

- ``comparison.md``: one Markdown table, one row per run (the columns of ``summary.md``);
- ``loss_curves.png``: ``train/loss`` (solid) and ``val/loss`` (dashed, dots) against the
  optimizer step, one colour per run.
"""

import argparse
import json
from pathlib import Path

from evaluation.curves import plot_loss_curves, read_loss_curves
from evaluation.run_table import summary_table


def compare_runs(run_dirs: list[str], out_dir: str) -> Path:
    """Write comparison.md and loss_curves.png into ``out_dir``; returns the Markdown file's path."""
    summaries = [read_summary(Path(run_dir)) for run_dir in run_dirs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    curves_path = out / "loss_curves.png"
    # A list, not a dict: two save dirs may both hold a run called lora/fit.
    curves = [(summary["run"], read_loss_curves(Path(run_dir))) for summary, run_dir in zip(summaries, run_dirs)]
    plot_loss_curves(curves, curves_path)
    markdown_path = out / "comparison.md"
    markdown_path.write_text(comparison_markdown(summaries, curves_path.name), encoding="utf-8")
    return markdown_path


def read_summary(run_dir: Path) -> dict:
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(
            f"{summary_path} does not exist: pass a run's version folder (runs/<name>/fit) from a fit "
            "that ran with the RunSummary callback, which writes summary.json when the fit ends"
        )
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    summary["run"] = summary.get("run") or run_dir.name
    return summary


def comparison_markdown(summaries: list[dict], curves_file: str) -> str:
    return "\n".join(["# Run comparison", "", summary_table(summaries), "", f"![loss curves]({curves_file})", ""])


def compare_command(argv: list[str]) -> None:
    """sft compare RUN_DIR [RUN_DIR ...] --out DIR."""
    parser = argparse.ArgumentParser(prog="sft compare", description="Compare runs: a Markdown table and loss curves.")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a run's folder: runs/<name>/fit")
    parser.add_argument("--out", required=True, help="folder to write comparison.md and loss_curves.png into")
    args = parser.parse_args(argv)
    print(compare_runs(args.run_dirs, args.out))
