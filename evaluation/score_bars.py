"""The report's per-type bars: each question type's primary metric and the overall score, one bar per
side (base, tuned) in one PNG, with the value written on each bar.

On ten questions a type, 0.100 → 0.000 is one answer: the bars show at a glance which types moved and
which way, and the report's table beside them gives the counts.
"""

from pathlib import Path

from evaluation.scoring import TYPE_ORDER


def primary_scores(metrics: dict) -> dict[str, tuple[str, float]]:
    """type -> (its primary metric's name, value), in the report's type order, then ``overall``.

    >>> primary_scores({"math": {"accuracy": 0.5, "count": 2},
    ...                 "overall": {"score": 0.5, "primary": {"math": "accuracy"}}})
    {'math': ('accuracy', 0.5), 'overall': ('score', 0.5)}
    """
    overall = metrics.get("overall", {})
    scores = {}
    for record_type in TYPE_ORDER:
        name = overall.get("primary", {}).get(record_type)
        if isinstance(metrics.get(record_type, {}).get(name), (int, float)):
            scores[record_type] = (name, float(metrics[record_type][name]))
    if isinstance(overall.get("score"), (int, float)):
        scores["overall"] = ("score", float(overall["score"]))
    return scores


def plot_scores_by_type(sides: list[tuple[str, dict]], path: Path):
    """(side name, metrics) pairs drawn as grouped bars into a PNG at ``path``; returns the figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scores = [primary_scores(metrics) for _, metrics in sides]
    groups = list(dict.fromkeys(group for side_scores in scores for group in side_scores))
    labels = [f"{group}\n{next(s[group][0] for s in scores if group in s)}" for group in groups]
    figure = Figure(figsize=(10, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    width = 0.8 / max(len(sides), 1)
    for index, ((name, _), side_scores) in enumerate(zip(sides, scores)):
        positions = [group_index + (index - (len(sides) - 1) / 2) * width for group_index in range(len(groups))]
        values = [side_scores.get(group, ("", 0.0))[1] for group in groups]
        bars = axes.bar(positions, values, width, label=name, color=f"C{index}")
        axes.bar_label(bars, fmt="%.3f", fontsize="small")
    axes.set_xticks(range(len(groups)), labels)
    axes.set_ylim(0, 1.1)  # every metric is in [0, 1]; room above for the labels
    axes.set_ylabel("score (primary metric)")
    axes.grid(axis="y", alpha=0.3)
    figure.legend(loc="outside right upper", fontsize="small")
    figure.savefig(path, format="png")
    return figure
