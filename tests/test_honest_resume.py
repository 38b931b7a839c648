"""A resume says where it differs from its checkpoint: on other training data it stops in one line
(or, with data.resume_on_new_data, trains the new data from its first record), and a checkpoint of
other model settings (a LoRA rank) names them in one line, not hundreds of size mismatches.

One fit of 2 steps on a.jsonl (8 QA records, batches of 2, plain shuffling: 4 batches an epoch)
stops mid-epoch; each test resumes a copy of it.
"""

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from datamodules.batching import EpochBatchSampler
from lightning_app.main import main
from modules.sft_module import SFTModule
from tests.factories import QA_RECORDS, write_jsonl
from tests.test_bad_input import sft_errors
from tests.modules.training.test_resume import folder_state

SEED = 7
NEW_RECORDS = [{"id": f"b{i}", "question": f"Name the colour number {i}.", "answer": f"Colour {i} is blue."}
               for i in range(6)]
CHECKPOINT = Path("runs/tiny/fit/checkpoints/last.ckpt")
RESUMED = Path("runs/tiny/fit_1/checkpoints/last.ckpt")  # a resume from a named file writes a new run


def write_config(folder: Path, model_dir) -> str:
    config = {
        "seed_everything": SEED,
        "trainer": {"accelerator": "cpu", "precision": "32-true", "max_steps": 2, "log_every_n_steps": 1,
                    "enable_progress_bar": False, "enable_model_summary": False,
                    "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                               "init_args": {"save_dir": "runs", "name": "tiny"}}},
        "model": {"model_name_or_path": str(model_dir), "lr_schedule": "constant",
                  "peft_config": {"class_path": "peft.LoraConfig", "init_args": {"r": 16, "lora_alpha": 8}}},
        "merge": {"enabled": False},  # no merged export: not what these tests look at
        "data": {"train_path": write_jsonl(folder / "a.jsonl", QA_RECORDS), "format": "qa", "batch_size": 2,
                 "group_by_length": False},
    }
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture(scope="module")
def stopped_fit(tiny_model_dir, tmp_path_factory):
    """A folder holding the config, a.jsonl and the runs/ of a fit stopped after 2 of its 4 steps."""
    folder = tmp_path_factory.mktemp("stopped")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        main(["fit", "--config", write_config(folder, tiny_model_dir)])
    return folder


@pytest.fixture
def resumable(stopped_fit, tmp_path, monkeypatch) -> Path:
    """This test's own copy of the stopped fit, as the working directory (the config names its files)."""
    shutil.copytree(stopped_fit / "runs", tmp_path / "runs")
    shutil.copy(stopped_fit / "a.jsonl", tmp_path / "a.jsonl")
    shutil.copy(stopped_fit / "tiny.yaml", tmp_path / "tiny.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def trained_ids(monkeypatch) -> list[list[str]]:
    """The record ids of every training batch the fits of a test run, in order."""
    batches, training_step = [], SFTModule.training_step

    def recording(module, batch, batch_idx):
        batches.append(list(batch["ids"]))
        return training_step(module, batch, batch_idx)

    monkeypatch.setattr(SFTModule, "training_step", recording)
    return batches


def epoch_batch_ids(records: list[dict], epoch: int = 0) -> list[list[str]]:
    """The ids of each batch of ``epoch`` in the order the data module draws them (plain shuffling)."""
    order = EpochBatchSampler(len(records), 2, SEED).epoch_batches(torch.Generator().manual_seed(SEED + epoch))
    return [[records[row]["id"] for row in batch] for batch in order]


RESUME = ["fit", "--config", "tiny.yaml", "--ckpt_path", str(CHECKPOINT), "--trainer.max_steps", "4"]


def test_a_resume_on_other_data_stops_in_one_line_and_writes_nothing(resumable, monkeypatch, capsys):
    new_data = write_jsonl(resumable / "b.jsonl", NEW_RECORDS)
    before = folder_state(resumable / "runs")
    errors = sft_errors([*RESUME, "--data.train_path", new_data], monkeypatch, capsys)
    assert errors == [
        f"error: {CHECKPOINT} was trained on other training data (8 records then, 6 in {new_data} now): resuming "
        "would skip the new data's first records as if trained on them; add --data.resume_on_new_data true to "
        "train the new data from its first record with the checkpoint's weights, optimizer and step, or resume "
        "with the checkpoint's training data"]
    assert folder_state(resumable / "runs") == before


def test_with_the_option_the_new_data_trains_from_its_first_record(resumable, trained_ids):
    new_data = write_jsonl(resumable / "b.jsonl", NEW_RECORDS)
    main([*RESUME, "--data.train_path", new_data, "--data.resume_on_new_data", "true"])
    resumed = torch.load(resumable / RESUMED, map_location="cpu", weights_only=True)
    assert resumed["global_step"] == 4  # weights, optimizer and step went on
    assert {int(state["step"]) for state in resumed["optimizer_states"][0]["state"].values()} == {4}
    assert trained_ids == epoch_batch_ids(NEW_RECORDS)[:2]  # not its batches 2 and 3: none skipped

    # Resumed again on the new data, it goes on where that data stopped, not where a.jsonl's epoch would.
    trained_ids.clear()
    main(["fit", "--config", "tiny.yaml", "--ckpt_path", str(RESUMED), "--trainer.max_steps", "5",
          "--data.train_path", new_data])
    assert trained_ids == epoch_batch_ids(NEW_RECORDS)[2:3]


def test_a_resume_on_the_same_data_goes_on_where_the_epoch_stopped(resumable, trained_ids):
    main(RESUME)
    assert trained_ids == epoch_batch_ids(QA_RECORDS)[2:4]


def test_a_checkpoint_of_another_lora_rank_names_both_in_one_line(resumable, monkeypatch, capsys):
    for subcommand in (["fit", "--trainer.max_steps", "4"], ["validate", "--data.val_path", "a.jsonl"]):
        errors = sft_errors([*subcommand, "--config", "tiny.yaml", "--ckpt_path", str(CHECKPOINT),
                             "--model.peft_config.init_args.r", "8"], monkeypatch, capsys)
        assert errors == [f"error: {CHECKPOINT} was trained with model.peft_config r=16; this config has r=8: use the "
                          "checkpoint's settings (drop the overrides) or start a new fit"]


def test_a_lora_checkpoint_with_a_full_fine_tuning_config_is_named(resumable, monkeypatch, capsys):
    errors = sft_errors(["predict", "--config", "tiny.yaml", "--ckpt_path", str(CHECKPOINT),
                         "--model.peft_config", "null", "--data.predict_path", "a.jsonl"], monkeypatch, capsys)
    assert errors == [f"error: {CHECKPOINT} was trained with model.peft_config LoraConfig; this config has full "
                      "fine-tuning (no model.peft_config): use the checkpoint's settings (drop the overrides) or "
                      "start a new fit"]
