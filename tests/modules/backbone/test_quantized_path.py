"""A quantized base through the whole path on a CPU, for 4-bit and 8-bit: fit, a resume that ends
on the straight run's adapter, test, predict, the merged folder and its GGUF."""

import json
from pathlib import Path

import pytest
import torch

from lightning_app.main import main
from tests.factories import TYPED_RECORDS, write_jsonl


def fit_args(model_dir, tmp_path, bits: str, name: str, steps: int, *extra: str) -> list[str]:
    unlabeled = [{key: value for key, value in record.items() if key != "answer"} for record in TYPED_RECORDS]
    return ["fit", "--seed_everything", "3", "--model.model_name_or_path", str(model_dir),
            "--model.quantization", bits, "--data.train_path", write_jsonl(tmp_path / "train.jsonl", TYPED_RECORDS),
            "--data.test_path", str(tmp_path / "train.jsonl"),
            "--data.predict_path", write_jsonl(tmp_path / "unlabeled.jsonl", unlabeled),
            "--model.peft_config", json.dumps({"class_path": "peft.LoraConfig", "init_args": {"r": 4, "lora_alpha": 8}}),
            "--model.optimizer", json.dumps({"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.01}}),
            "--model.lr_schedule", "constant", "--model.warmup", "0",  # the same steps whatever the budget
            "--model.generation.max_new_tokens", "4", "--data.batch_size", "1", "--trainer.max_steps", str(steps),
            "--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--trainer.enable_progress_bar", "false",
            "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--trainer.logger.init_args.name", name,
            "--checkpoint.monitor", "null", *extra]


def adapter_state(run_dir) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_a_quantized_lora_fits_resumes_answers_merges_and_exports(bits, tiny_model_dir, tmp_path):
    main(fit_args(tiny_model_dir, tmp_path, bits, "straight", 3))
    main(fit_args(tiny_model_dir, tmp_path, bits, "resumed", 2, "--merge.enabled", "false"))  # stopped mid-epoch
    main(fit_args(tiny_model_dir, tmp_path, bits, "resumed", 3, "--ckpt_path", "last"))
    straight, resumed = tmp_path / "runs/straight/fit", tmp_path / "runs/resumed/fit"
    expected, got = adapter_state(straight), adapter_state(resumed)
    assert expected.keys() == got.keys() and all("lora_" in name for name in got)
    for name in expected:  # the same steps on the same batches in the same process kind: the same weights
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6, msg=lambda text, name=name: f"{name}: {text}")

    checkpoint = str(straight / "checkpoints" / "last.ckpt")
    test_args = [word for word in fit_args(tiny_model_dir, tmp_path, bits, "answers", 3)[1:]]
    main(["test", *test_args, "--ckpt_path", checkpoint])
    metrics = json.loads(next((tmp_path / "runs/answers").glob("test*/metrics.json")).read_text())
    assert sum(metrics[kind]["count"] for kind in metrics["overall"]["types"]) == len(TYPED_RECORDS)
    main(["predict", *test_args, "--ckpt_path", checkpoint])
    [answers] = (tmp_path / "runs/answers").glob("predict*/predictions.json")
    assert [row["id"] for row in json.loads(answers.read_text())["result"]["results"]] == ["t1", "t2", "t3", "t4"]

    report = json.loads((straight / "merged" / "merge_report.json").read_text())
    assert report["quantized"] and report["passed"] and report["relative_error"] < 1e-5
    out = tmp_path / "model.gguf"
    main(["export-gguf", str(straight / "merged"), "--out", str(out), "--type", "f16"])
    assert json.loads((tmp_path / "model.gguf.report.json").read_text())["passed"]


def test_scenario_4s_qlora_option_fits_and_scores_its_alpaca_file(tiny_model_dir, tmp_path, monkeypatch):
    """The header's QLoRA line on the Alpaca-with-history example files, as that user runs it (one step)."""
    project = Path(__file__).resolve().parents[3]
    monkeypatch.chdir(project)
    config = "configs/scenarios/alpaca_history_lora.yaml"
    shared = ["--config", config, "--model.model_name_or_path", str(tiny_model_dir), "--model.quantization", "4bit",
              "--trainer.precision", "32-true", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
              "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
              "--trainer.logger.init_args.name", "alpaca_qlora", "--data.max_length", "1024"]
    main(["fit", *shared, "--trainer.max_steps", "1", "--trainer.val_check_interval", "1",
          "--trainer.limit_val_batches", "1"])
    main(["test", *shared, "--model.generation.max_new_tokens", "4", "--ckpt_path", "last"])
    metrics = json.loads((tmp_path / "runs/alpaca_qlora/test/metrics.json").read_text())
    assert 0.0 <= metrics["generic-generate"]["rougeL"] <= 1.0 and metrics["missing_predictions"] == []
    assert json.loads((tmp_path / "runs/alpaca_qlora/fit/merged/merge_report.json").read_text())["quantized"]
