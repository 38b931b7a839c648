"""A checkpoint that cannot be used ends in one line naming the file and what to do (exit 2, no
traceback, nothing written), for every subcommand that takes one; `--ckpt_path last` passes over an
unreadable newest checkpoint to the newest readable one."""

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from lightning_app.main import console_main, main
from tests.factories import QA_RECORDS, write_jsonl


class Foreign:  # a pickled object that is not a tensor: loading it fully would run code
    def __reduce__(self):
        return (os.system, ("echo ran",))


def truncated(path: Path, good: Path) -> Path:
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return path


def foreign(path: Path, good: Path) -> Path:
    checkpoint = torch.load(good, weights_only=True)
    checkpoint["callbacks"] = {"x": Foreign()}
    torch.save(checkpoint, path)  # a script that put its own object into a checkpoint
    return path


BAD = {  # name: (make the file from a good checkpoint, words of the message)
    "missing": (lambda path, good: path, "no such checkpoint file"),
    "truncated": (truncated, "cannot be read as a checkpoint"),
    "a jsonl file": (lambda path, good: Path(write_jsonl(path, QA_RECORDS)), "not a PyTorch checkpoint"),
    "foreign object": (foreign, "refused: it holds a pickled posix.system"),
    "a folder": (lambda path, good: (path.mkdir(), path)[1], "a folder, not a checkpoint file"),
}


@pytest.fixture(scope="module")
def fitted(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fitted")
    train = write_jsonl(folder / "train.jsonl", QA_RECORDS)
    args = ["--model.model_name_or_path", str(tiny_model_dir), "--data.format", "qa", "--data.train_path", train,
            "--data.test_path", train, "--data.predict_path", train, "--trainer.accelerator", "cpu",
            "--trainer.logger.init_args.save_dir", str(folder / "runs"), "--trainer.logger.init_args.name", "qa",
            "--model.generation.max_new_tokens", "4", "--merge.enabled", "false"]
    main(["fit", *args, "--trainer.max_steps", "1"])
    return folder, args, folder / "runs" / "qa" / "fit" / "checkpoints" / "last.ckpt"


# Every kind with predict; the check runs before any subcommand's work, so fit and test once each.
CASES = [(bad, "predict") for bad in BAD] + [("truncated", "fit"), ("foreign object", "test")]


@pytest.mark.parametrize("bad, subcommand", CASES)
def test_a_bad_checkpoint_is_one_line(fitted, bad, subcommand, tmp_path, monkeypatch, capsys):
    folder, args, good = fitted
    make, words = BAD[bad]
    path = make(tmp_path / f"bad-{bad.replace(' ', '-')}.ckpt", good)
    runs_before = sorted(p.name for p in (folder / "runs" / "qa").iterdir())
    monkeypatch.setattr(sys, "argv", ["sft", subcommand, *args, "--ckpt_path", str(path)])
    with pytest.raises(SystemExit) as stopped:
        console_main()
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert stopped.value.code == 2 and len(errors) == 1, captured.err
    assert errors[0].startswith(f"error: {path}: ") and words in errors[0]
    assert "weights_only=False" not in captured.err and "Traceback" not in captured.err
    assert "ran" not in captured.out  # the foreign object's code never ran
    assert sorted(p.name for p in (folder / "runs" / "qa").iterdir()) == runs_before  # nothing written


def test_last_passes_over_an_unreadable_newest_checkpoint(fitted, capsys):
    folder, args, good = fitted
    newer = good.parent.parent.parent / "version_9" / "checkpoints" / "last.ckpt"
    newer.parent.mkdir(parents=True)
    truncated(newer, good)
    try:
        main(["predict", *args, "--ckpt_path", "last"])
    finally:
        newer.unlink()
    out = capsys.readouterr().out
    assert f"--ckpt_path last: passed over {newer}: cannot be read as a checkpoint" in out
    assert f"using {good}" in out
