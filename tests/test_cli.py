"""The CLI in-process on a tiny model: fit, resume from `last`, predict from the checkpoint, inspect."""

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_app.main import main
from tests.factories import BF16_CONFIG_ON_THIS_CPU, TYPED_RECORDS, write_jsonl


@pytest.fixture
def run_config(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    unlabeled = [{k: v for k, v in r.items() if k != "answer"} for r in TYPED_RECORDS]
    config = {
        "seed_everything": 7,
        "trainer": {
            "accelerator": "cpu", "max_steps": 2, "log_every_n_steps": 1, "enable_progress_bar": False,
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                       "init_args": {"save_dir": "runs", "name": "tiny"}},
        },
        "model": {
            "model_name_or_path": str(tiny_model_dir),
            "peft_config": {"class_path": "peft.LoraConfig", "init_args": {"r": 4, "lora_alpha": 8}},
            "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3}},
            "generation": {"max_new_tokens": 4},
        },
        "data": {
            "train_path": write_jsonl(tmp_path / "train.jsonl", TYPED_RECORDS),
            "val_path": write_jsonl(tmp_path / "val.jsonl", TYPED_RECORDS[:2]),
            "predict_path": write_jsonl(tmp_path / "test.jsonl", list(reversed(unlabeled))),
            "format": "typed", "batch_size": 2,
        },
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def test_fit_resume_and_predict(run_config, tmp_path):
    main(["fit", "--config", run_config])
    run_dir = tmp_path / "runs" / "tiny" / "fit"
    first = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert first["global_step"] == 2
    assert first["state_dict"] and all("lora_" in key for key in first["state_dict"])  # adapters only
    assert (run_dir / "config.yaml").is_file()
    events = EventAccumulator(str(run_dir)).Reload()
    assert {"train/loss", "val/loss", "train/learning_rate"} <= set(events.Tags()["scalars"])

    main(["fit", "--config", run_config, "--trainer.max_steps", "4", "--ckpt_path", "last"])
    resumed = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == 4  # the step counter continued in the same run directory
    assert sorted(path.name for path in (tmp_path / "runs" / "tiny").iterdir()) == ["fit"]
    adam_steps = {int(state["step"]) for state in resumed["optimizer_states"][0]["state"].values()}
    assert adam_steps == {4}  # the optimizer state was restored, not restarted
    assert resumed["tokens_seen"][0] > first["tokens_seen"][0]

    main(["predict", "--config", run_config, "--ckpt_path", "last"])
    answers = json.loads((tmp_path / "runs" / "tiny" / "predict" / "predictions.json").read_text())
    ids = [row["id"] for row in answers["result"]["results"]]
    assert ids == ["t4", "t3", "t2", "t1"]  # every input id once, in input order
    contents = {row["id"]: row["content"] for row in answers["result"]["results"]}
    assert isinstance(contents["t4"], list) and len(contents["t4"]) == 3  # code: 3 samples by default
    assert all(isinstance(contents[record_id], str) for record_id in ("t1", "t2", "t3"))
    lines = (tmp_path / "runs" / "tiny" / "predict" / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(line)["type"] for line in lines] == ["code-generate", "generic-generate", "choice", "math"]

    # Settings given with --ckpt_path win over the checkpoint's (LightningCLI restores saved hparams).
    per_type = '{"code-generate": {"num_samples": 2, "do_sample": true}}'
    main(["predict", "--config", run_config, "--ckpt_path", "last", "--model.generation_per_type", per_type])
    answers = json.loads((tmp_path / "runs" / "tiny" / "predict_1" / "predictions.json").read_text())  # the next predict
    contents = {row["id"]: row["content"] for row in answers["result"]["results"]}
    assert len(contents["t4"]) == 2


def test_a_fit_resumed_mid_epoch_ends_with_the_weights_of_an_uninterrupted_fit(run_config, tmp_path):
    """4 batches an epoch, a checkpoint every 2 steps: resuming from step 2 must train the epoch's
    other 2 batches, not redraw the epoch from the start."""
    one_per_batch = ["--data.batch_size", "1", "--trainer.max_steps", "4"]
    main(["fit", "--config", run_config, *one_per_batch, "--trainer.logger.init_args.name", "straight",
          "--checkpoint.every_n_train_steps", "2", "--checkpoint.save_top_k", "-1"])
    checkpoints = tmp_path / "runs" / "straight" / "fit" / "checkpoints"
    main(["fit", "--config", run_config, *one_per_batch, "--ckpt_path", str(checkpoints / "epoch=0-step=2.ckpt"),
          "--seed_everything", "8"])  # another seed on the command line: the checkpoint's order wins
    straight = load_checkpoint(checkpoints / "last.ckpt")
    resumed = load_checkpoint(tmp_path / "runs" / "tiny" / "fit" / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == straight["global_step"] == 4
    assert straight["state_dict"].keys() == resumed["state_dict"].keys()
    for name, weight in straight["state_dict"].items():  # the same kernels on the same batches in the same order
        torch.testing.assert_close(resumed["state_dict"][name], weight, rtol=1e-6, atol=1e-7, msg=name)


def test_checkpoint_from_another_peft_config_is_refused(run_config, tmp_path, tiny_model_dir):
    """Non-strict PEFT loading must not silently ignore adapters that do not fit the model."""
    from peft import LoraConfig

    from modules.sft_module import SFTModule

    main(["fit", "--config", run_config])
    other = SFTModule(str(tiny_model_dir), peft_config=LoraConfig(r=4, target_modules=["q_proj"]))
    other.configure_model()
    checkpoint = load_checkpoint(tmp_path / "runs" / "tiny" / "fit" / "checkpoints" / "last.ckpt")
    with pytest.raises(ValueError, match="trained with another"):
        other.on_load_checkpoint(checkpoint)


def test_inspect_dumps_what_training_uses(run_config, tmp_path, capsys):
    dump = tmp_path / "dump.jsonl"
    main(["inspect", "--config", run_config, "--show", "1", "--dump", str(dump)])
    rows = [json.loads(line) for line in dump.read_text().splitlines()]
    assert len(rows) == len(TYPED_RECORDS)
    from datamodules.chat_tokens import tokenize_conversation
    from datamodules.formats import to_messages
    from tests.tiny import build_tokenizer

    expected = tokenize_conversation(build_tokenizer(), to_messages(TYPED_RECORDS[0], "typed"))
    assert rows[0]["input_ids"] == expected["input_ids"] and rows[0]["labels"] == expected["labels"]
    assert "⟦2 × 3 = 6. \\boxed{6}<|im_end|>\n⟧" in capsys.readouterr().out


def test_validate_and_test_from_a_checkpoint_report_token_mean_loss(run_config, tmp_path):
    from lightning_app.cli import SFTCLI

    main(["fit", "--config", run_config])
    test_path = write_jsonl(tmp_path / "labelled_test.jsonl", TYPED_RECORDS)
    validated = SFTCLI(args=["validate", "--config", run_config, "--ckpt_path", "last"])
    tested = SFTCLI(args=["test", "--config", run_config, "--ckpt_path", "last", "--data.test_path", test_path])
    val_loss = float(validated.trainer.callback_metrics["val/loss"])
    test_loss = float(tested.trainer.callback_metrics["test/loss"])
    assert 0 < val_loss < 20 and 0 < test_loss < 20
    assert val_loss != test_loss  # two records vs four: different token means


def test_print_config_shows_the_resolved_configuration(run_config, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", run_config, "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["peft_config"]["class_path"] == "peft.LoraConfig"
    assert "tokenizer_name_or_path" not in printed["data"]  # a link target: it follows the model


def test_sft_test_scores_per_type_and_sft_score_agrees(run_config, tmp_path, capsys):
    main(["fit", "--config", run_config])
    labelled = write_jsonl(tmp_path / "labelled.jsonl", TYPED_RECORDS)
    main(["test", "--config", run_config, "--ckpt_path", "last", "--data.test_path", labelled])
    test_run = tmp_path / "runs" / "tiny" / "test"
    metrics = json.loads((test_run / "metrics.json").read_text())
    assert {"choice", "math", "generic-generate", "code-generate", "overall"} <= set(metrics)
    assert metrics["code-generate"]["samples"] == 3  # three sampled answers were executed
    assert all(0.0 <= value <= 1.0 for value in (metrics["choice"]["accuracy"], metrics["overall"]["score"]))
    assert "overall" in capsys.readouterr().out  # the table was printed
    events = EventAccumulator(str(test_run)).Reload()
    assert "test/choice/accuracy" in events.Tags()["scalars"]

    rescored_path = tmp_path / "rescored.json"
    main(["score", "--predictions", str(test_run / "test_answers" / "predictions.json"),
          "--references", labelled, "--out", str(rescored_path)])
    rescored = json.loads(rescored_path.read_text())
    assert rescored == metrics  # one scorer for runs and for answers files made elsewhere


def test_report_compares_base_and_tuned_runs(run_config, tmp_path):
    main(["fit", "--config", run_config])
    labelled = write_jsonl(tmp_path / "labelled.jsonl", TYPED_RECORDS)
    main(["test", "--config", run_config, "--ckpt_path", "last", "--data.test_path", labelled])  # runs/tiny/test
    main(["test", "--config", run_config, "--data.test_path", labelled])  # runs/tiny/test_1: the base model
    runs = tmp_path / "runs" / "tiny"
    out = tmp_path / "report"
    main(["report", "--base", str(runs / "test_1"), "--tuned", str(runs / "test"),
          "--references", labelled, "--out", str(out)])
    markdown = (out / "report.md").read_text()
    base_metrics = json.loads((runs / "test_1" / "metrics.json").read_text())
    tuned_metrics = json.loads((runs / "test" / "metrics.json").read_text())
    def right(metrics):  # 1 choice record: 0.000 (0/1) or 1.000 (1/1)
        return f"{metrics['choice']['accuracy']:.3f} ({round(metrics['choice']['accuracy'])}/1)"
    accuracy_row = f"| choice | accuracy | {right(base_metrics)} | {right(tuned_metrics)} |"
    assert accuracy_row in markdown
    for record in TYPED_RECORDS:
        assert f"| {record['type']} | {record['id']} |" in markdown  # an example row per type
    assert "<table>" in (out / "report.html").read_text()
    assert (out / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # from the training run's events


def demo_places(printed: str) -> dict[str, Path]:
    return {what: Path(where) for what, where in (line.split(": ", 1) for line in printed.splitlines() if ": " in line)
            if what in {"checkpoint", "answers", "report", "merged model"}}


def test_demo_command_runs_every_step_and_prints_where_things_are(run_config, tmp_path, capsys):
    labelled = write_jsonl(tmp_path / "labelled.jsonl", TYPED_RECORDS)
    unlabeled = write_jsonl(tmp_path / "same.jsonl", [{k: v for k, v in r.items() if k != "answer"} for r in TYPED_RECORDS])
    main(["demo", "--config", run_config, "--references", labelled, "--data.predict_path", unlabeled])
    printed = capsys.readouterr().out
    places = demo_places(printed)
    assert places["checkpoint"].is_file() and places["report"].is_file()
    assert (places["merged model"] / "merge_report.json").is_file()
    assert "| choice | accuracy |" in printed  # the base-vs-tuned table was printed
    runs = sorted(path.name for path in (tmp_path / "runs" / "tiny").iterdir())
    assert runs == ["fit", "test-base", "test-tuned"]  # what TensorBoard lists: each named for what ran
    tuned_loss = json.loads((tmp_path / "runs/tiny/test-tuned/summary.json").read_text())["test_metrics"]["test/loss"]
    assert re.search(rf"\| overall \| answer loss \(lower is better\) \| \d\.\d{{3}} \| {tuned_loss:.3f} \|", printed)
    # The predict file asks the test file's questions: the tuned test's answers are the answers file, and
    # they are what `sft predict` writes.
    assert places["answers"].parent.name == "test_answers"
    main(["predict", "--config", run_config, "--data.predict_path", unlabeled, "--ckpt_path", str(places["checkpoint"])])
    predicted = tmp_path / "runs" / "tiny" / "predict" / "predictions.json"
    assert json.loads(predicted.read_text())["result"] == json.loads(places["answers"].read_text())["result"]


def test_the_demo_answers_a_predict_file_with_other_questions_with_sft_predict(run_config, tmp_path):
    from lightning_app.demo import check_answering_files

    labelled = write_jsonl(tmp_path / "labelled.jsonl", TYPED_RECORDS)  # run_config's predict file: reversed
    assert not check_answering_files(run_config, labelled, [])
    same = write_jsonl(tmp_path / "same.jsonl", [{k: v for k, v in r.items() if k != "answer"} for r in TYPED_RECORDS])
    assert check_answering_files(run_config, labelled, ["--data.predict_path", same])


@BF16_CONFIG_ON_THIS_CPU
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])  # bf16-mixed: LoRA's frozen weights in bf16
def test_validation_answers_give_a_task_metric_to_keep_the_best_checkpoint(run_config, tmp_path, precision):
    from lightning_app.cli import SFTCLI

    cli = SFTCLI(args=["fit", "--config", run_config, "--trainer.precision", precision,
                       "--trainer.max_steps", "4", "--trainer.val_check_interval", "2",
                       "--val_answers.num_records", "2", "--checkpoint.monitor", "val/overall/score",
                       "--checkpoint.mode", "max"])
    events = EventAccumulator(str(tmp_path / "runs" / "tiny" / "fit")).Reload()
    scores = events.Scalars("val/overall/score")
    assert len(scores) == 2 and all(0.0 <= point.value <= 1.0 for point in scores)
    assert [event.step for event in events.Tensors("val/answers/text_summary")] == [2, 4]  # the answer table (on by default)
    best = cli.trainer.checkpoint_callback
    assert float(best.best_model_score) == max(point.value for point in scores)


def test_a_fit_without_checkpointing_writes_no_checkpoint_and_still_exports(run_config, tmp_path, capsys):
    """Lightning's own flag: before, our always-on checkpoint callback made it a MisconfigurationException."""
    main(["fit", "--config", run_config, "--trainer.enable_checkpointing", "false"])
    run_dir = tmp_path / "runs" / "tiny" / "fit"
    assert not (run_dir / "checkpoints").exists()
    assert (run_dir / "adapter" / "adapter_config.json").is_file()  # the trained adapter is still kept
    assert "checkpoints: none (trainer.enable_checkpointing false)" in capsys.readouterr().out
