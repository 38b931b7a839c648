"""``sft inspect`` lists every bad record of a file, one line each, and exits with 2."""

import pytest

from lightning_app.main import main
from tests.factories import TYPED_RECORDS, write_jsonl
from tests.test_cli import run_config  # noqa: F401  (the fixture: a tiny model, LoRA, 4 typed records)


def test_inspect_lists_every_bad_line_and_exits_with_2(run_config, tmp_path, capsys):
    rows = [
        TYPED_RECORDS[0],
        {"id": "no-type", "prompt": "2+2?", "answer": "4"},  # line 2: no type
        TYPED_RECORDS[2],
        {"id": "t1", "type": "generic-generate", "prompt": "again", "answer": "x"},  # line 4: id of line 1
        {"id": "no-choices", "type": "choice", "prompt": "Even?", "answer": "B"},  # line 5: no choices
    ]
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(SystemExit) as stop:
        main(["inspect", "--config", run_config, "--data.train_path", bad])
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 3, lines
    assert all(f"{bad}, line {number}:" in line for number, line in zip((2, 4, 5), errors))
    assert "'type'" in errors[0] and "appears again" in errors[1] and "choices" in errors[2]
    assert lines[-1] == "sft inspect: 3 bad record(s); fix them and run again"

    with pytest.raises(SystemExit):
        main(["inspect", "--config", run_config, "--data.train_path", bad, "--max-errors", "2"])
    assert capsys.readouterr().err.count("error: ") == 2
