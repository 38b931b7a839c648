"""``sft report``: base vs tuned, side by side, as Markdown and HTML with per-type bars and loss curves.

Each side is either the directory of an ``sft test`` run (its ``metrics.json`` and
``test_answers/predictions.jsonl``) or an answers file, scored here against the references with
the same scorer as ``sft score``. The loss curves come from the training run behind the tuned side:
the run itself if it logged training loss, else the run its ``config.yaml``'s ``ckpt_path`` points
into.
"""

import html
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from core.tables import markdown_table
from core.record import Record
from evaluation.curves import plot_loss_curves, read_loss_curves
from evaluation.run_images import add_report_images
from evaluation.score_bars import plot_scores_by_type
from evaluation.scoring import TYPE_ORDER, load_predictions, score_records

EXAMPLES_PER_TYPE = 3


@dataclass
class Side:
    """One side of the comparison: its name, answers by id, and metrics by type."""

    name: str
    answers: dict
    metrics: dict
    source: Path


def load_side(name: str, run_or_answers: str, references: list[Record]) -> Side:
    source = Path(run_or_answers)
    if source.is_dir():
        answers = load_predictions(str(source / "test_answers" / "predictions.jsonl"))
        metrics_path = source / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else score_records(answers, references)
        metrics = with_answer_loss(metrics, source)
    else:
        answers = load_predictions(str(source))
        metrics = score_records(answers, references)
    return Side(name, answers, metrics, source)


ANSWER_LOSS = "answer loss (lower is better)"


def with_answer_loss(metrics: dict, run_dir: Path) -> dict:
    """``metrics`` with the run's loss on the reference answers (``test/loss`` in its summary.json) under
    ``overall``: on a few questions a type the scores move with one answer, while this loss covers every
    answer token, so a report shows what the tuning learned even where a small model's scores do not."""
    summary_path = run_dir / "summary.json"
    loss = json.loads(summary_path.read_text()).get("test_metrics", {}).get("test/loss") if summary_path.is_file() else None
    if loss is None:
        return metrics
    return {**metrics, "overall": {**metrics.get("overall", {}), ANSWER_LOSS: float(loss)}}


def training_run_of(run_dir: Path) -> Path | None:
    """The directory whose TensorBoard events hold the training loss behind ``run_dir``."""
    if not run_dir.is_dir():
        return None
    config_path = run_dir / "config.yaml"
    checkpoint = (yaml.safe_load(config_path.read_text()) or {}).get("ckpt_path") if config_path.is_file() else None
    if checkpoint and Path(checkpoint).parent.name == "checkpoints":
        return Path(checkpoint).parent.parent
    return run_dir


# Shares of questions answered right: shown with their counts, since on 10 questions a type
# 0.100 -> 0.000 is one question (1/10 -> 0/10), which a rate alone hides.
QUESTION_SHARES = ("accuracy", "exact_match", "think_closed")


def metric_rows(base: Side, tuned: Side) -> list[list[str]]:
    """[type, metric, base, tuned, change] for every metric either side has."""
    rows = []
    types = [t for t in list(TYPE_ORDER) + ["overall"] if t in base.metrics or t in tuned.metrics]
    for record_type in types:
        before_metrics, after_metrics = base.metrics.get(record_type, {}), tuned.metrics.get(record_type, {})
        for name in sorted(set(before_metrics) | set(after_metrics)):
            before, after = before_metrics.get(name), after_metrics.get(name)
            if isinstance(before, (int, float)) or isinstance(after, (int, float)):
                rows.append([record_type, name, _number(before, name, before_metrics),
                             _number(after, name, after_metrics), _change(before, after)])
    return rows


def _number(value, name: str = "", type_metrics: dict | None = None) -> str:
    """A rate with what it counts where that is known: ``0.100 (1/10)``, ``pass@1 0.133 (4/30 samples)``.

    >>> _number(0.1, "accuracy", {"count": 10}), _number(0.4 / 3, "pass@1", {"passed": 4, "samples": 30})
    ('0.100 (1/10)', '0.133 (4/30 samples)')
    >>> _number(0.25, "rougeL", {"count": 10}), _number(None), _number(7, "count")
    ('0.250', '', '7')
    """
    if value is None:
        return ""
    if not isinstance(value, float):
        return str(value)
    type_metrics = type_metrics or {}
    if name in QUESTION_SHARES and type_metrics.get("count"):
        return f"{value:.3f} ({round(value * type_metrics['count'])}/{type_metrics['count']})"
    if name == "pass@1" and type_metrics.get("samples"):
        return f"{value:.3f} ({type_metrics['passed']}/{type_metrics['samples']} samples)"
    return f"{value:.3f}"


def _change(before, after) -> str:
    if isinstance(before, (int, float)) and isinstance(after, (int, float)):
        return f"{after - before:+.3f}"
    return ""


def example_rows(base: Side, tuned: Side, references: list[Record]) -> list[list[str]]:
    """A few [type, id, prompt, base answer, tuned answer, reference] per question type."""
    shown: dict[str, int] = {}
    rows = []
    for record in references:
        if shown.get(record.type, 0) >= EXAMPLES_PER_TYPE:
            continue
        shown[record.type] = shown.get(record.type, 0) + 1
        rows.append([record.type, record.id, record.prompt_messages[-1]["content"],
                     _first(base.answers.get(record.id)), _first(tuned.answers.get(record.id)),
                     _first(list(record.reference.answers) or [record.reference.gold_letter or ""])])
    return rows


def _first(content) -> str:
    if isinstance(content, list):
        return content[0] if content else ""
    return "" if content is None else str(content)


def html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td><pre>{html.escape(c)}</pre></td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


METRIC_HEADER = ["type", "metric", "base", "tuned", "change"]
EXAMPLE_HEADER = ["type", "id", "prompt", "base answer", "tuned answer", "reference"]


def write_report(base: Side, tuned: Side, references: list[Record], out_dir: Path, figures: dict[str, Path]) -> Path:
    """Writes ``report.md`` and ``report.html`` into ``out_dir``, showing ``figures`` (title -> PNG in
    ``out_dir``); returns the Markdown path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics, examples = metric_rows(base, tuned), example_rows(base, tuned, references)
    title = f"{base.name} vs {tuned.name}"
    figures_md = "".join(f"\n## {name}\n\n![{name}]({path.name})\n" for name, path in figures.items())
    markdown = (f"# {title}\n\nbase: `{base.source}`  \ntuned: `{tuned.source}`\n\n## Metrics per type\n\n"
                f"{markdown_table(METRIC_HEADER, metrics)}\n{figures_md}\n## Examples\n\n"
                f"{markdown_table(EXAMPLE_HEADER, examples)}\n")
    figures_html = "".join(f'<h2>{html.escape(name)}</h2><img src="{html.escape(path.name)}">'
                           for name, path in figures.items())
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px;vertical-align:top}"
            "pre{white-space:pre-wrap;margin:0;max-width:40em}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><h2>Metrics per type</h2>{html_table(METRIC_HEADER, metrics)}"
            f"{figures_html}<h2>Examples</h2>{html_table(EXAMPLE_HEADER, examples)}</body></html>\n")
    (out_dir / "report.html").write_text(page, encoding="utf-8")
    markdown_path = out_dir / "report.md"
    markdown_path.write_text(markdown, encoding="utf-8")
    return markdown_path


def build_report(base: str, tuned: str, references: list[Record], out_dir: str, names=("base", "tuned")) -> Path:
    """Base vs tuned on the labelled ``references`` (read with the data's format and renames). The
    figures also go into the TensorBoard events of the training run behind the tuned side, where there
    is one (the Images tab: ``report/scores_by_type``, ``report/loss_curves``)."""
    base_side = load_side(names[0], base, references)
    tuned_side = load_side(names[1], tuned, references)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = {"Scores per type": out / "scores_by_type.png"}
    plot_scores_by_type([(base_side.name, base_side.metrics), (tuned_side.name, tuned_side.metrics)],
                        figures["Scores per type"])
    training_run = training_run_of(tuned_side.source)
    if training_run is not None:
        figures["Loss curves"] = out / "loss_curves.png"
        plot_loss_curves([(tuned_side.name, read_loss_curves(training_run))], figures["Loss curves"])
        add_report_images(training_run, {f"report/{path.stem}": path for path in figures.values()})
    return write_report(base_side, tuned_side, references, out, figures)
