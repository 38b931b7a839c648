"""Every kind of bad input a user hands the CLI, in one table: data files, settings, checkpoints, model
folders, resumes on other data, checkpoints that disagree with the config. (A full disk or an
unwritable path needs a simulated fault and a broken GGUF the embedded model's cache: those rows are
tests/test_io_faults.py's, held to the same four checks.)

Each row ends the same way: exit code 2, one ``error:`` line that names the path it is about and says
what to do, no traceback, and nothing new under the run folder (no config.yaml, no checkpoint, no
``*.partial`` left behind). The deeper checks of each kind live beside their code's tests
(tests/test_bad_input.py, test_bad_checkpoints.py, test_io_faults.py, test_honest_resume.py); this
table is the promise that no kind was forgotten.
"""

import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from lightning_app.main import console_main, main
from tests.factories import QA_RECORDS, write_jsonl


@dataclass
class Case:
    """``argv(world)`` is the command; ``names`` the path the line must name; ``says`` words it must hold."""

    argv: Callable[["World"], list[str]]
    names: Callable[["World"], str]
    says: str


@dataclass
class World:
    """A fitted run to point bad inputs at: its folder, base options and last checkpoint."""

    folder: Path
    options: list[str]
    checkpoint: Path
    model_dir: Path

    def model_copy(self, name: str, weights: bytes | None) -> str:
        """The tiny model's folder copied, its model.safetensors replaced by ``weights`` (None: removed)."""
        copy = self.folder / "inputs" / name
        shutil.copytree(self.model_dir, copy, dirs_exist_ok=True)
        (copy / "model.safetensors").unlink()
        if weights is not None:
            (copy / "model.safetensors").write_bytes(weights)
        return str(copy)

    def file(self, name: str, content: bytes) -> Path:
        path = self.folder / "inputs" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(content)
        return path

    def folder_of(self, name: str) -> Path:
        path = self.folder / "inputs" / name
        path.mkdir(parents=True, exist_ok=True)
        return path


@pytest.fixture(scope="module")
def world(tiny_model_dir, tmp_path_factory) -> World:
    folder = tmp_path_factory.mktemp("matrix")
    train = write_jsonl(folder / "train.jsonl", QA_RECORDS)
    options = ["--model.model_name_or_path", str(tiny_model_dir), "--data.format", "qa", "--data.train_path", train,
               "--data.test_path", train, "--data.predict_path", train, "--trainer.accelerator", "cpu",
               "--trainer.logger.init_args.save_dir", str(folder / "runs"), "--trainer.logger.init_args.name", "qa",
               "--model.generation.max_new_tokens", "4", "--merge.enabled", "false",
               "--model.peft_config", "peft.LoraConfig", "--model.peft_config.init_args.r", "4"]
    main(["fit", *options, "--trainer.max_steps", "2"])
    return World(folder, options, folder / "runs" / "qa" / "fit" / "checkpoints" / "last.ckpt",
                 Path(tiny_model_dir))


def half_of(path: Path) -> bytes:
    return path.read_bytes()[: path.stat().st_size // 2]


CASES = {
    "data: a broken JSON line": Case(
        lambda w: ["fit", *w.options, "--data.train_path", str(w.file("broken.jsonl", b'{"question": "q", "answer": \n'))],
        lambda w: str(w.folder / "inputs" / "broken.jsonl"), "line 1"),
    "data: a missing file": Case(
        lambda w: ["fit", *w.options, "--data.train_path", str(w.folder / "inputs" / "nowhere.jsonl")],
        lambda w: "nowhere.jsonl", "nowhere.jsonl"),
    "data: max_length below a chat turn": Case(
        lambda w: ["fit", *w.options, "--data.max_length", "8"], lambda w: "data.max_length", "at least 32"),
    "data: a split that keeps nothing": Case(
        lambda w: ["fit", *w.options, "--data.truncation", "keep_start", "--data.max_length", "40", "--data.train_path",
                   write_jsonl(w.folder / "inputs" / "long.jsonl", [{"question": "why " * 20, "answer": "because"}])],
        lambda w: str(w.folder / "inputs" / "long.jsonl"), "keeps none of its 1 records"),
    "config: a misspelt option": Case(
        lambda w: ["fit", *w.options, "--trainer.max_stepz", "3"], lambda w: "max_stepz", "max_stepz"),
    "config: a negative LoRA rank": Case(
        lambda w: ["fit", *w.options, "--model.peft_config.init_args.r", "-4"], lambda w: "r", "-4"),
    "model: a folder that does not exist": Case(
        lambda w: ["fit", *w.options, "--model.model_name_or_path", str(w.folder / "inputs" / "no-model")],
        lambda w: str(w.folder / "inputs" / "no-model"), "no-model"),
    "model: truncated weights": Case(
        lambda w: ["fit", *w.options, "--model.model_name_or_path",
                   w.model_copy("half-model", half_of(w.model_dir / "model.safetensors"))],
        lambda w: str(w.folder / "inputs" / "half-model" / "model.safetensors"), "download or export the model again"),
    "model: a folder without weights": Case(
        lambda w: ["predict", *w.options, "--model.model_name_or_path", w.model_copy("no-weights", None)],
        lambda w: str(w.folder / "inputs" / "no-weights"), "has no weights file"),
    "checkpoint: missing": Case(
        lambda w: ["predict", *w.options, "--ckpt_path", str(w.folder / "inputs" / "gone.ckpt")],
        lambda w: str(w.folder / "inputs" / "gone.ckpt"), "no such checkpoint file"),
    "checkpoint: truncated": Case(
        lambda w: ["fit", *w.options, "--ckpt_path", str(w.file("half.ckpt", half_of(w.checkpoint)))],
        lambda w: str(w.folder / "inputs" / "half.ckpt"), "cannot be read as a checkpoint"),
    "checkpoint: a JSON Lines file": Case(
        lambda w: ["test", *w.options, "--ckpt_path", str(w.file("data.ckpt", json.dumps(QA_RECORDS[0]).encode()))],
        lambda w: str(w.folder / "inputs" / "data.ckpt"), "not a PyTorch checkpoint"),
    "checkpoint: another LoRA rank than the config's": Case(
        lambda w: ["validate", *w.options, "--data.val_path", w.options[w.options.index("--data.train_path") + 1],
                   "--model.peft_config.init_args.r", "8", "--ckpt_path", str(w.checkpoint)],
        lambda w: str(w.checkpoint), "r=4; this config has r=8"),
    "resume: other training data": Case(
        lambda w: ["fit", *w.options, "--trainer.max_steps", "4", "--ckpt_path", str(w.checkpoint), "--data.train_path",
                   write_jsonl(w.folder / "inputs" / "other.jsonl", QA_RECORDS[:6])],
        lambda w: str(w.checkpoint), "--data.resume_on_new_data true"),
}


def files_under(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*") if "token-cache" not in path.parts}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_ends_in_one_line_naming_the_path(name, world, monkeypatch, capsys):
    case = CASES[name]
    argv = case.argv(world)
    runs_before = files_under(world.folder / "runs")
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["sft", *argv])
    with pytest.raises(SystemExit) as stopped:
        console_main()
    err = capsys.readouterr().err
    assert stopped.value.code == 2, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert case.names(world) in errors[0] and case.says in errors[0], errors[0]
    assert files_under(world.folder / "runs") == runs_before  # nothing written, nothing half-written


def test_the_matrix_covers_every_kind_the_issue_names():
    kinds = {name.split(":")[0] for name in CASES}
    assert {"data", "config", "model", "checkpoint", "resume"} <= kinds
