"""Small data files and Lightning objects shared by the training and CLI tests."""

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from core.constants import IGNORE_INDEX
from core.step_loss import StepTokenCounts
from datamodules.sft_datamodule import SFTDataModule
from modules.heads.kept_logits import forward_keeping, next_token_labels
from modules.sft_module import SFTModule

# Answers of very different lengths: a per-micro-batch mean would weight them differently.
QA_RECORDS = [
    {"id": f"q{i}", "question": f"What is {i} plus {i}?", "answer": ("It is " + str(2 * i) + ". ") * (1 + i % 4)}
    for i in range(8)
]

TYPED_RECORDS = [
    {"id": "t1", "type": "math", "prompt": "2 pens at 3 yuan?", "answer": "2 × 3 = 6. \\boxed{6}"},
    {"id": "t2", "type": "choice", "prompt": "Even?", "choices": {"A": "3", "B": "4"}, "answer": "B"},
    {"id": "t3", "type": "generic-generate", "prompt": "Reverse 'ab'", "answer": "ba"},
    {"id": "t4", "type": "code-generate", "prompt": "def f():\n    \"\"\"Return 1.\"\"\"\n",
     "answer": "```python\ndef f():\n    return 1\n```", "test": "def check(candidate):\n    assert candidate() == 1\n",
     "entry_point": "f"},
]


def kept_loss_and_grads(model, batch) -> tuple[torch.Tensor, dict]:
    """The answer-only loss of ``batch`` (logits only where trained) and the gradients it gives."""
    model.zero_grad()
    targets = next_token_labels(batch["labels"])
    loss = forward_keeping(model, batch, targets != IGNORE_INDEX, targets).loss
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def write_jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return str(path)


def quiet_trainer(**overrides) -> L.Trainer:
    settings = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    settings.update(overrides)
    return L.Trainer(**settings)


def qa_datamodule(model_dir, train_path: str, batch_size: int, **kwargs) -> SFTDataModule:
    kwargs.setdefault("group_by_length", False)  # plain shuffling: the same order for any batch size
    return SFTDataModule(train_path=train_path, format="qa", batch_size=batch_size,
                         tokenizer_name_or_path=str(model_dir), **kwargs)


def sft_module(model_dir, **kwargs) -> SFTModule:
    module = SFTModule(model_name_or_path=str(model_dir), **kwargs)
    module.configure_model()
    return module


def typed_batch(model_dir, tmp_path, records, batch_size=None, name="typed.jsonl") -> dict:
    """One training batch of typed records, stamped with its step's token counts (one micro-batch a step)."""
    path = write_jsonl(tmp_path / name, records)
    datamodule = SFTDataModule(train_path=path, format="typed", batch_size=batch_size or len(records),
                               group_by_length=False, tokenizer_name_or_path=str(model_dir))
    datamodule.setup("fit")
    loader = datamodule._loader(datamodule.training_examples("train"), batch_size or len(records),
                                datamodule.collator_for_training())
    return next(iter(StepTokenCounts(loader, 1)))


def greedy_answering_config(model_dir, folder: Path, records: list[dict]) -> str:
    """A config that answers ``records`` (predict and labelled test) greedily with the tiny model:
    every type deterministic, so reruns and other process counts must give the same bytes. Each type
    gets its own answer length, so its own settings, so batches hold one type each (types generated
    alike share batches) and the tests' batch lists stay short to write."""
    config = {
        "trainer": {"accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False,
                    "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                               "init_args": {"save_dir": "runs", "name": "answers"}}},
        "model": {"model_name_or_path": str(model_dir), "generation": {"max_new_tokens": 4},
                  "generation_per_type": {record_type: {"max_new_tokens": 4 + offset} for offset, record_type in
                                          enumerate(["choice", "code-generate", "generic-generate", "math"])}},
        "data": {"predict_path": write_jsonl(folder / "predict.jsonl", records),
                 "test_path": write_jsonl(folder / "labelled.jsonl", records),
                 "format": "typed", "batch_size": 2, "answer_batch_size": 2},
    }
    path = folder / "greedy.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)

# A config written for a GPU asks for bf16; parsed or run on a CPU without bf16 instructions the CLI
# warns that it would be ~300x slower (tests/modules/training/test_precision.py checks that warning). Tests that use
# such configs on the CPU on purpose expect it, on either kind of CPU.
BF16_CONFIG_ON_THIS_CPU = pytest.mark.filterwarnings("ignore:trainer.precision is bf16-mixed, but this CPU has no bf16")


# Processes that start with everything imported -------------------------------------------------------
# `python -m lightning_app ...` spends ~10 s of a 2-core CPU importing torch, Lightning, transformers,
# PEFT and TRL before its first line runs. Tests that need a process of their own (to kill it, to send
# it a signal, to be rank 0 of two) start it from a fork server that made those imports once a session
# (multiprocessing's "forkserver" with preloaded modules); the forked process then runs its command
# line with runpy, as `python -m module args` or `python script.py args` would. A rank that Lightning
# relaunches for DDP is a fresh `python` (its command is built from this process's argv). It ends the
# way multiprocessing ends a process (exit code from SystemExit, non-daemon threads joined, no atexit
# handlers): tests of how a real process starts or exits (tests/test_chat.py, test_quiet_start.py)
# keep a fresh `python`.
PREIMPORTED_MODULES = ["lightning_app.cli", "tests.factories"]


def _fork_server():
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PREIMPORTED_MODULES)
    return context


def start_preimporting() -> None:
    """Starts the fork server's imports in the background, so that a test's own work overlaps them."""
    from multiprocessing import forkserver

    _fork_server()
    forkserver.ensure_running()


def _run_python_argv(argv: list[str], cwd: str, env: dict, stdout, stderr) -> None:
    """In the forked process: ``python *argv`` in ``cwd`` with ``env``, writing to ``stdout`` and
    ``stderr`` (a pipe's writing end, a file path, or None for /dev/null)."""
    import runpy
    import types

    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    if "OMP_NUM_THREADS" in env:  # OpenMP read it when torch was imported: set it as a fresh process has it
        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    for fd, target in ((1, stdout), (2, stderr)):
        if hasattr(target, "fileno"):
            os.dup2(target.fileno(), fd)
        else:
            opened = os.open(target or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.dup2(opened, fd)
            os.close(opened)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # line by line, as the tests read it
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    elif argv[0] == "-c":
        sys.argv = ["-c", *argv[2:]]
        sys.modules["__main__"] = main_module = types.ModuleType("__main__")
        exec(compile(argv[1], "<string>", "exec"), main_module.__dict__)
    else:
        sys.argv = list(argv)
        runpy.run_path(argv[0], run_name="__main__")


class PreimportedProcess:
    """What the tests use of ``subprocess.Popen([sys.executable, *argv], ...)``, for a process forked by
    the fork server: stdout a pipe to read lines from (``stdout_pipe``) or a file, stderr a file (None:
    /dev/null)."""

    def __init__(self, argv: list[str], cwd, env: dict | None = None, stdout_pipe: bool = False,
                 stdout_path=None, stderr_path=None):
        context = _fork_server()
        reader, writer = context.Pipe(duplex=False) if stdout_pipe else (None, None)
        self._process = context.Process(target=_run_python_argv, args=(
            list(argv), str(cwd), dict(os.environ if env is None else env), writer or stdout_path, stderr_path))
        self._process.start()
        self.pid = self._process.pid
        self.stdout = None
        if stdout_pipe:
            writer.close()  # the child holds the only writing end now: the pipe ends when the child does
            self.stdout = open(os.dup(reader.fileno()), encoding="utf-8")
            reader.close()

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode  # -N when killed by signal N, as Popen has it

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, signal_number: int) -> None:
        if self._process.exitcode is None:
            with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                os.kill(self.pid, signal_number)

    def kill(self) -> None:
        self.send_signal(9)  # SIGKILL

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(f"python {self._process.name}", timeout)
        return self._process.exitcode


def run_python(argv: list[str], cwd, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True,
    timeout=timeout)``, forked by the fork server."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="python-run-") as folder:
        stdout_path, stderr_path = Path(folder, "stdout"), Path(folder, "stderr")
        process = PreimportedProcess(argv, cwd, env, stdout_path=stdout_path, stderr_path=stderr_path)
        try:
            return_code = process.wait(timeout)
        finally:
            process.kill()
        outputs = [path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
                   for path in (stdout_path, stderr_path)]
        return subprocess.CompletedProcess([sys.executable, *argv], return_code, *outputs)
