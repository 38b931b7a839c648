"""Small data files and Lightning objects shared by the training and CLI tests."""

import json
from pathlib import Path

import lightning as L
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
