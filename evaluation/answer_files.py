"""Answer files: ``predictions.json`` in the seed project's format plus ``predictions.jsonl``.

Answers are put back in input order (every id once) and written atomically, so an interrupted run
never leaves a half-written file. ``predict`` and ``test`` write them; ``sft score`` and
``sft report`` read them back with ``scoring.load_predictions``.
"""

import json
from pathlib import Path

from core.files import write_text_atomically


def ordered_answers(batches: list[list[dict]]) -> list[dict]:
    """Flatten per-batch answers and restore input order; refuse duplicate ids."""
    rows = sorted((row for batch in batches for row in batch), key=lambda row: row["row_index"])
    seen: set[str] = set()
    for row in rows:
        if row["id"] in seen:
            raise ValueError(f"record id '{row['id']}' appears more than once in the predict file")
        seen.add(row["id"])
    return rows


def write_answers(rows: list[dict], output_dir: Path) -> Path:
    """Write both files; returns the path of ``predictions.json``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    seed_format = {"result": {"results": [{"id": row["id"], "content": row["content"]} for row in rows]}}
    json_path = output_dir / "predictions.json"
    write_text_atomically(json_path, json.dumps(seed_format, ensure_ascii=False, indent=2) + "\n")
    lines = [json.dumps({"id": r["id"], "type": r["type"], "content": r["content"]}, ensure_ascii=False) for r in rows]
    write_text_atomically(output_dir / "predictions.jsonl", "\n".join(lines) + "\n")
    return json_path
