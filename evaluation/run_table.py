"""A run's summary as a Markdown table: one row per run, for ``summary.md`` and ``sft compare``."""

from core.tables import markdown_table

# (heading, summary field, format): the table of summary.md, and of ``sft compare`` across runs.
SUMMARY_COLUMNS = [
    ("run", "run", "{}"),
    ("method", "method", "{}"),
    ("optimizer", "optimizer_with_lr", "{}"),
    ("trainable %", "trainable_percent", "{:.3f}"),
    ("peak memory (MiB)", "peak_memory", "{}"),
    ("time/epoch (s)", "epoch_seconds", "{:.2f}"),
    ("tokens/s", "tokens_per_second", "{:.1f}"),
    ("final train loss", "final_train_loss", "{:.4f}"),
    ("final val loss", "final_val_loss", "{:.4f}"),
]


def summary_markdown(summary: dict) -> str:
    lines = [f"# Run summary: {summary['run']}", "", summary_table([summary]), ""]
    if summary["test_metrics"]:
        lines += ["## Test metrics", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {name} | {value:.4f} |" for name, value in sorted(summary["test_metrics"].items())]
        lines.append("")
    return "\n".join(lines)


def summary_table(summaries: list[dict]) -> str:
    """A Markdown table, one row per run summary; "n/a" where a figure was not measured."""
    header = [heading for heading, _, _ in SUMMARY_COLUMNS]
    rows = [[_cell(summary, field, form) for _, field, form in SUMMARY_COLUMNS] for summary in summaries]
    return markdown_table(header, rows)


def _cell(summary: dict, field: str, form: str) -> str:
    if field == "optimizer_with_lr":
        text = _optimizer_text(summary.get("optimizer"), summary.get("lr"))
    elif field == "peak_memory":
        text = _memory_text(summary.get("peak_memory_mib"), summary.get("peak_memory_kind"))
    else:
        text = None if summary.get(field) is None else form.format(summary[field])
    return "n/a" if text is None else text.replace("|", "\\|")


def _optimizer_text(name: str | None, lr: float | None) -> str | None:
    if name is None:
        return None
    return name if lr is None else f"{name} (lr {lr:g})"


def _memory_text(mib: float | None, kind: str | None) -> str | None:
    labels = {"gpu_allocated": "GPU", "cpu_rss": "CPU RSS"}
    return None if mib is None else f"{mib:.1f} ({labels.get(kind, kind)})"
