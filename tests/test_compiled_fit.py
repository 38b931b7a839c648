"""Scenario 2 (reading-comprehension QA: a JSON list without ids, LoRA on a small chat model) as
a compiled bf16-mixed fit from the command line: the layers compiled with the CPU block attention
inside their graph, over micro-batches of different lengths, train as the eager SDPA fit does.

The unit tests check the compiled attention one level down; this one goes through the CLI, the
data module and Lightning's bf16 autocast. A compiled graph that only served its first batch
length (a saved query slice's stride fixed to it) crashed here on the second batch, and in a
model-level test (tests/modules/speed/test_training_attention.py); the float32 tests had passed."""

import json
import logging

import pytest
import torch

from lightning_app.main import main
from tests.tolerances import TINY_DEPTH, assert_close_normwise, reordering_bound

# SQuAD-style contexts of different lengths: with length grouping off, each micro-batch of 2 has its own length
RECORDS = [{"context": " ".join([f"The {thing} is {quality}."] * repeats), "question": f"What is the {thing}?",
            "answer": quality}
           for thing, quality, repeats in [("water", "wet", 1), ("fire", "hot", 6), ("ice", "cold", 3),
                                           ("sand", "dry", 9), ("steam", "hot", 2), ("snow", "white", 5)]]
LORA = json.dumps({"class_path": "peft.LoraConfig", "init_args": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0}})


def fit_summary(tmp_path, model_dir, torch_compile: str) -> dict:
    train_path = tmp_path / "squad_train.json"
    train_path.write_text(json.dumps(RECORDS), encoding="utf-8")  # a JSON list, as the user has it
    main(["fit", "--seed_everything", "1", "--model.model_name_or_path", str(model_dir),
          "--model.torch_compile", torch_compile, "--model.peft_config", LORA, "--trainer.precision", "bf16-mixed",
          "--data.train_path", str(train_path), "--data.format", "qa", "--data.batch_size", "2",
          "--data.group_by_length", "false", "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false",
          "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
          "--trainer.logger.init_args.name", torch_compile, "--merge.enabled", "false",
          "--checkpoint.monitor", "null", "--checkpoint.save_last", "false", "--checkpoint.save_top_k", "0"])
    return json.loads((tmp_path / "runs" / torch_compile / "fit" / "summary.json").read_text())


@pytest.mark.numerics
@pytest.mark.filterwarnings("ignore")
def test_a_compiled_bf16_lora_fit_of_a_qa_list_trains_as_the_eager_fit(tiny_qwen_dir, tmp_path, caplog):
    eager = fit_summary(tmp_path, tiny_qwen_dir, "false")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        compiled = fit_summary(tmp_path, tiny_qwen_dir, "true")
    assert "compiled 1 decoder layers" in caplog.text and "causal blocks of matmuls" in caplog.text  # the path under test
    # bf16 autocast sums in float32 and rounds each result to bf16 once, inductor where it fuses and eager
    # after each op: one bf16 rounding per dependent result through a forward/backward (the steps' LoRA
    # updates are lr-sized, their differences far smaller still)
    losses = ["final_train_loss", "last_step_train_loss"]
    assert_close_normwise(torch.tensor([compiled[name] for name in losses]), torch.tensor([eager[name] for name in losses]),
                          reordering_bound(torch.bfloat16, terms=1, depth=TINY_DEPTH))
