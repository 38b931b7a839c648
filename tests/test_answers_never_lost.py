"""`sft predict` and `sft test` keep every answer they finish: a run killed after its first batch and
rerun into the same folder loses none, duplicates none, generates only the rest, and ends with the
files of an uninterrupted run. Answers made with other settings are refused, not mixed."""

import json
import signal
import time
from pathlib import Path

import pytest

from evaluation.answer_journal import JOURNAL_NAME, AnswersFromOtherSettingsError
from lightning_app.main import main
from modules.sft_module import SFTModule
from tests.factories import TYPED_RECORDS, PreimportedProcess, greedy_answering_config, start_preimporting

pytestmark = pytest.mark.processes  # several ranks or a killed process: run alone (Makefile)

RECORDS = TYPED_RECORDS + [
    {"id": "t5", "type": "generic-generate", "prompt": "Say 'hi'", "answer": "hi"},
    {"id": "t6", "type": "math", "prompt": "1 + 1?", "answer": "\\boxed{2}"},
]
# Batches of 2 of one type each, in input order within a type: math [t1 t6], choice [t2],
# generic [t3 t5], code [t4]. The kill comes as the 2nd batch starts: the 1st (2 answers) is done.
FIRST_BATCH = ["t1", "t6"]
ORIGINAL_PREDICT_STEP = SFTModule.predict_step


class Killed(RuntimeError):
    """Stands in for a kill: raised where the next batch would be generated."""


def watch_answering(monkeypatch, kill_at_batch: int | None = None) -> list[list[str]]:
    """The ids of each batch the model answers (predict and test); a Killed as batch ``kill_at_batch`` starts."""
    answered_batches: list[list[str]] = []

    def predict_step(module, batch, batch_idx):
        if len(answered_batches) + 1 == kill_at_batch:
            raise Killed(f"killed before batch {kill_at_batch}")
        answered_batches.append(list(batch["ids"]))
        return ORIGINAL_PREDICT_STEP(module, batch, batch_idx)

    monkeypatch.setattr(SFTModule, "predict_step", predict_step)
    return answered_batches


@pytest.fixture
def greedy_config(tiny_model_dir, tmp_path, monkeypatch):
    """The tiny base model answering 6 records greedily (every type: answers are deterministic)."""
    monkeypatch.chdir(tmp_path)
    return greedy_answering_config(tiny_model_dir, tmp_path, RECORDS)


def journal_ids(journal: Path) -> list[str]:
    return [json.loads(line)["id"] for line in journal.read_text().splitlines()[1:]] if journal.exists() else []


# `sft predict` in a subprocess whose 2nd batch hangs, so it can be killed for real after the 1st.
HANGS_AT_THE_SECOND_BATCH = """
import sys, time
from modules.sft_module import SFTModule
answer_batch, batches = SFTModule.predict_step, []
def predict_step(module, batch, batch_idx):
    if batches:
        time.sleep(300)
    batches.append(batch_idx)
    return answer_batch(module, batch, batch_idx)
SFTModule.predict_step = predict_step
from lightning_app.main import main
main(sys.argv[1:])
"""


def predict_killed_after_the_first_batch(config: str, output_dir: Path) -> None:
    """SIGKILL (no handler runs, nothing is flushed at exit) once the first batch is in the journal.
    The process is forked with its imports made (tests/factories.py)."""
    command = ["-c", HANGS_AT_THE_SECOND_BATCH, "predict", "--config", config, "--predictions.output_dir",
               str(output_dir)]
    process = PreimportedProcess(command, cwd=Path(config).parent)
    deadline = time.monotonic() + 120
    while len(journal_ids(output_dir / JOURNAL_NAME)) < len(FIRST_BATCH) and process.poll() is None:
        assert time.monotonic() < deadline, "the first batch never reached the journal"
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL


@pytest.mark.numerics
def test_a_killed_predict_resumes_with_the_answers_of_an_uninterrupted_run(greedy_config, tmp_path, monkeypatch):
    start_preimporting()  # the killed run's imports, while the uninterrupted one answers here
    straight = watch_answering(monkeypatch)
    main(["predict", "--config", greedy_config, "--predictions.output_dir", "straight"])
    assert sorted(id_ for batch in straight for id_ in batch) == sorted(r["id"] for r in RECORDS)

    predict_killed_after_the_first_batch(greedy_config, tmp_path / "resumed")
    journal = tmp_path / "resumed" / JOURNAL_NAME
    assert journal_ids(journal) == FIRST_BATCH  # the finished batch is on disk
    assert not (tmp_path / "resumed" / "predictions.json").exists()
    with open(journal, "a", encoding="utf-8") as file:
        file.write('{"id": "t2", "type": "cho')  # a line torn by a real kill

    rerun = watch_answering(monkeypatch)
    main(["predict", "--config", greedy_config, "--predictions.output_dir", "resumed"])
    generated = [id_ for batch in rerun for id_ in batch]
    assert sorted(generated) == ["t2", "t3", "t4", "t5"]  # only the unanswered, each once
    for name in ("predictions.json", "predictions.jsonl"):
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "straight" / name).read_bytes()
    results = json.loads((tmp_path / "resumed" / "predictions.json").read_text())["result"]["results"]
    assert [row["id"] for row in results] == [r["id"] for r in RECORDS]  # every id once, input order
    assert not journal.exists()  # removed once predictions.json holds every answer


@pytest.mark.numerics
def test_a_killed_test_resumes_with_the_metrics_of_an_uninterrupted_run(greedy_config, tmp_path, monkeypatch):
    main(["test", "--config", greedy_config, "--answer_metrics.output_dir", "straight"])

    watch_answering(monkeypatch, kill_at_batch=2)
    with pytest.raises(Killed):
        main(["test", "--config", greedy_config, "--answer_metrics.output_dir", "resumed"])
    journal = tmp_path / "resumed" / "test_answers" / JOURNAL_NAME
    assert journal_ids(journal) == FIRST_BATCH

    rerun = watch_answering(monkeypatch)
    main(["test", "--config", greedy_config, "--answer_metrics.output_dir", "resumed"])
    assert sorted(id_ for batch in rerun for id_ in batch) == ["t2", "t3", "t4", "t5"]
    straight_metrics = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    assert json.loads((tmp_path / "resumed" / "metrics.json").read_text()) == straight_metrics
    answers = "test_answers/predictions.json"
    assert (tmp_path / "resumed" / answers).read_bytes() == (tmp_path / "straight" / answers).read_bytes()
    assert not journal.exists()


def test_answers_made_with_other_settings_are_refused_not_mixed(greedy_config, tmp_path, monkeypatch):
    watch_answering(monkeypatch, kill_at_batch=2)
    with pytest.raises(Killed):
        main(["predict", "--config", greedy_config, "--predictions.output_dir", "out"])
    journal = tmp_path / "out" / JOURNAL_NAME
    before = journal.read_bytes()

    rerun = watch_answering(monkeypatch)
    with pytest.raises(AnswersFromOtherSettingsError, match=r"generation\.default\.max_new_tokens: was 4, now 5"):
        main(["predict", "--config", greedy_config, "--predictions.output_dir", "out",
              "--model.generation.max_new_tokens", "5"])
    assert rerun == []  # refused before anything was generated
    assert journal.read_bytes() == before


def test_a_run_killed_after_its_last_answer_writes_the_files_without_generating(greedy_config, tmp_path, monkeypatch):
    import callbacks.prediction_writer

    def killed_while_writing(rows, output_dir):
        raise Killed("killed while writing predictions.json")

    with monkeypatch.context() as patch:
        patch.setattr(callbacks.prediction_writer, "write_answers", killed_while_writing)
        with pytest.raises(Killed):
            main(["predict", "--config", greedy_config, "--predictions.output_dir", "out"])
    assert sorted(journal_ids(tmp_path / "out" / JOURNAL_NAME)) == sorted(r["id"] for r in RECORDS)

    rerun = watch_answering(monkeypatch)
    main(["predict", "--config", greedy_config, "--predictions.output_dir", "out"])
    assert rerun == []  # nothing left to answer: the loop never ran
    results = json.loads((tmp_path / "out" / "predictions.json").read_text())["result"]["results"]
    assert [row["id"] for row in results] == [r["id"] for r in RECORDS]
    assert not (tmp_path / "out" / JOURNAL_NAME).exists()
