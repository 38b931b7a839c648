"""`sft predict` and `sft test` on 2 CPU processes (gloo): each rank answers its share of the batches,
and rank 0 writes the files of a one-process run, byte for byte.

Both runs build the same type-grouped batches (same rows, so the same padding and the same greedy
answers); only who answers each batch differs. 7 records in batches of 2 make 5 batches: rank 0
answers batches 0, 2, 4 and rank 1 batches 1, 3 and batch 0 again, so both take 3 steps (a rank with
fewer would leave the other waiting at the end).

``--trainer.strategy ddp`` relaunches the command line once per extra rank, so the DDP runs go
through a script (a process of its own, forked with its imports made: tests/factories.py) that
records the ids of each batch a rank answers.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_app.main import main
from tests.factories import TYPED_RECORDS, greedy_answering_config, run_python, start_preimporting
from tests.tolerances import assert_close_normwise, reordering_bound

pytestmark = pytest.mark.processes  # several ranks or a killed process: run alone (Makefile)

RECORDS = TYPED_RECORDS + [
    {"id": "t5", "type": "generic-generate", "prompt": "Say 'hi'", "answer": "hi"},
    {"id": "t6", "type": "math", "prompt": "1 + 1?", "answer": "\\boxed{2}"},
    {"id": "t7", "type": "math", "prompt": "2 + 2?", "answer": "\\boxed{4}"},
]
# Batches: [t1 t6] [t7] (math), [t2] (choice), [t3 t5] (generic), [t4] (code).
RANK_BATCHES = {0: [["t1", "t6"], ["t2"], ["t4"]], 1: [["t7"], ["t3", "t5"], ["t1", "t6"]]}

# Each rank appends the ids of every batch it answers to answered.rank{r}.jsonl, and leaves done.rank{r}
# once `main` returned.
RECORDING_SCRIPT = """
import json, os, sys
from modules.sft_module import SFTModule
rank = os.environ.get("LOCAL_RANK", "0")
answer_batch = SFTModule.predict_step
def predict_step(module, batch, batch_idx):
    with open(f"answered.rank{rank}.jsonl", "a") as file:
        file.write(json.dumps(list(batch["ids"])) + "\\n")
    return answer_batch(module, batch, batch_idx)
SFTModule.predict_step = predict_step
from lightning_app.main import main
main(sys.argv[1:])
open(f"done.rank{rank}", "w").close()
"""


@pytest.fixture
def greedy_config(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return greedy_answering_config(tiny_model_dir, tmp_path, RECORDS)


def on_two_processes(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    script = tmp_path / "recording.py"
    script.write_text(RECORDING_SCRIPT)
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}  # rank 1 is a fresh python: it needs the path
    return run_python([str(script), *args, "--trainer.strategy", "ddp", "--trainer.devices", "2"], cwd=tmp_path, env=env)


def answered_batches(tmp_path: Path, rank: int) -> list[list[str]]:
    return [json.loads(line) for line in (tmp_path / f"answered.rank{rank}.jsonl").read_text().splitlines()]


def assert_both_ranks_answered_their_share(run: subprocess.CompletedProcess, tmp_path: Path) -> None:
    assert run.returncode == 0, run.stderr[-4000:]
    assert (tmp_path / "done.rank0").exists() and (tmp_path / "done.rank1").exists()  # both ranks returned
    assert {rank: answered_batches(tmp_path, rank) for rank in (0, 1)} == RANK_BATCHES


def test_predict_on_two_processes_writes_the_answers_of_one_process(greedy_config, tmp_path):
    start_preimporting()  # rank 0's imports, while one process answers here
    main(["predict", "--config", greedy_config, "--predictions.output_dir", "one"])

    ddp = on_two_processes(tmp_path, "predict", "--config", greedy_config, "--predictions.output_dir", "ddp")
    assert_both_ranks_answered_their_share(ddp, tmp_path)
    for name in ("predictions.json", "predictions.jsonl"):
        assert (tmp_path / "ddp" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()
    results = json.loads((tmp_path / "ddp" / "predictions.json").read_text())["result"]["results"]
    assert [row["id"] for row in results] == [r["id"] for r in RECORDS]  # every id once, input order
    assert not list((tmp_path / "ddp").glob("answers.partial*"))  # the ranks' journals are removed


def test_test_on_two_processes_scores_every_answer_as_one_process(greedy_config, tmp_path):
    start_preimporting()  # rank 0's imports, while one process answers here
    main(["test", "--config", greedy_config, "--answer_metrics.output_dir", "one"])

    ddp = on_two_processes(tmp_path, "test", "--config", greedy_config, "--answer_metrics.output_dir", "ddp")
    assert_both_ranks_answered_their_share(ddp, tmp_path)
    one_metrics = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert json.loads((tmp_path / "ddp" / "metrics.json").read_text()) == one_metrics
    answers = "test_answers/predictions.json"
    assert (tmp_path / "ddp" / answers).read_bytes() == (tmp_path / "one" / answers).read_bytes()
    assert not list((tmp_path / "ddp" / "test_answers").glob("answers.partial*"))
    # test/loss over both ranks' batches, rank 1's repeat of [t1, t6] left out: the one-process value.
    one_loss, ddp_loss = (EventAccumulator(str(tmp_path / "runs" / "answers" / version)).Reload().Scalars("test/loss")[-1].value
                          for version in ("test", "test_1"))  # one process, then two
    # the same batches' forwards (a rank's single thread may block a matmul otherwise) summed over ranks:
    # one forward's reordering (tests/tolerances.py, rule 2)
    assert_close_normwise(torch.tensor(ddp_loss), torch.tensor(one_loss), reordering_bound(torch.float32))
