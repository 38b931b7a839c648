"""Markdown tables, the one format every printed and written result table uses."""


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """``| a | b |`` rows under a header; pipes and newlines inside cells are escaped."""

    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", "<br>")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows])
