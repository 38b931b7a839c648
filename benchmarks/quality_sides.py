"""One run of the quality comparison (benchmarks/quality_vs_trl.py), in a process of its own.

A side trains and leaves a merged Hugging Face folder; ``evaluate`` scores any such folder (or the
base model) the same way, with this project's ``sft validate`` (held-out loss over the answer
tokens) and ``sft test`` (the layout's metric, greedy answers), so both trainers' models are
measured by one ruler.
"""

import json
from pathlib import Path

# The settings of issue 30, for both sides: LoRA r16 / alpha 32 / no dropout on every linear layer,
# AdamW 5e-4 without weight decay, micro-batches of 4 x 2, cosine with 10% warmup, clipping at 1.0,
# float32, max_length 512, one epoch.
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0}
LR, BATCH, ACCUMULATE, MAX_LENGTH, WARMUP = 5e-4, 4, 2, 512, 0.1

# Our batching variants (all else equal): what each changes is what the optimizer sees per step.
OURS_BATCHING = {
    "ours": [],  # the shipped defaults: length grouping within each optimizer step
    "ours-plain": ["--data.group_by_length", "false"],
    "ours-wide": ["--data.length_group_steps", "25"],  # windows of 200 examples: the default before issue 30
}


def data_options(layout: dict) -> list[str]:
    # TRL cuts an example's end (keep_start): both sides cut the same way, in training and scoring
    options = ["--data.format", layout["format"], "--data.truncation", "keep_start"]
    if layout.get("system_prompt"):
        options += ["--data.system_prompt", layout["system_prompt"]]
    return options


def run_trl(layout: dict, seed: int, work_dir: Path) -> dict:
    """TRL's SFTTrainer on the records as prompt/completion conversations; merged and saved."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from core.embedded import resolve_model_path
    from core.tokenizer import load_tokenizer
    from datamodules.normalize import ConversationSpec, read_records

    torch.manual_seed(seed)
    spec = ConversationSpec(layout["format"], system_prompt=layout.get("system_prompt"))
    rows = [{"prompt": r.prompt_messages, "completion": [r.messages[-1]]} for r in read_records(layout["train"], spec)]
    tokenizer = load_tokenizer(layout["model"])
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(layout["model"]), dtype=torch.float32)
    config = SFTConfig(
        output_dir=str(work_dir), per_device_train_batch_size=BATCH, gradient_accumulation_steps=ACCUMULATE,
        max_length=MAX_LENGTH, num_train_epochs=1, learning_rate=LR, lr_scheduler_type="cosine", warmup_steps=WARMUP,
        weight_decay=0.0, max_grad_norm=1.0, bf16=False, use_cpu=not torch.cuda.is_available(), report_to="none",
        save_strategy="no", logging_steps=1, seed=seed, disable_tqdm=True, packing=False)
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=LoraConfig(**LORA, target_modules="all-linear", task_type="CAUSAL_LM"))
    real_tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    seconds = trainer.train().metrics["train_runtime"]
    merged_dir = work_dir / "merged"
    trainer.model.merge_and_unload().save_pretrained(merged_dir)
    tokenizer.save_pretrained(merged_dir)
    return {"merged": str(merged_dir), "tokens_per_second": real_tokens / seconds, "batching": "random (TRL default)"}


def run_ours(layout: dict, seed: int, work_dir: Path, variant: str) -> dict:
    """``sft fit`` with the same settings and the variant's batching; its merged folder."""
    from lightning_app.cli import SFTCLI

    cli = SFTCLI(args=[
        "fit", "--seed_everything", str(seed), "--model.model_name_or_path", layout["model"],
        "--model.peft_config", json.dumps({"class_path": "peft.LoraConfig", "init_args": LORA}),
        "--model.optimizer", json.dumps({"class_path": "torch.optim.AdamW", "init_args": {"lr": LR, "weight_decay": 0.0}}),
        "--model.lr_schedule", "cosine", "--model.warmup", str(WARMUP), "--trainer.gradient_clip_val", "1.0",
        "--trainer.precision", "32-true", "--data.train_path", layout["train"], *data_options(layout),
        "--data.batch_size", str(BATCH), "--data.max_length", str(MAX_LENGTH),
        "--trainer.accumulate_grad_batches", str(ACCUMULATE), "--trainer.max_epochs", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(work_dir),
        "--trainer.logger.init_args.name", variant, "--checkpoint.monitor", "null", "--checkpoint.save_last", "false",
        "--checkpoint.save_top_k", "0", *OURS_BATCHING[variant]])
    run_dir = Path(cli.trainer.log_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    batching = " ".join(OURS_BATCHING[variant]) or "group_by_length, one-step windows (default)"
    return {"merged": str(run_dir / "merged"), "tokens_per_second": summary["tokens_per_second"], "batching": batching}


def evaluate(layout: dict, model: str, work_dir: Path) -> dict:
    """Held-out loss (``sft validate``) and the layout's metric (``sft test``, greedy) of ``model``."""
    from lightning_app.cli import SFTCLI

    common = ["--model.model_name_or_path", model, *data_options(layout), "--data.max_length", str(MAX_LENGTH),
              "--trainer.precision", "32-true", "--trainer.enable_progress_bar", "false",
              "--trainer.logger.init_args.save_dir", str(work_dir), "--data.eval_batch_size", "8"]
    validated = SFTCLI(args=["validate", *common, "--data.val_path", layout["val"],
                             "--trainer.logger.init_args.name", "validate"])
    held_out_loss = float(validated.trainer.callback_metrics["val/loss"])
    del validated
    tested = SFTCLI(args=["test", *common, "--data.test_path", layout["test"], "--trainer.logger.init_args.name", "test",
                          "--model.generation", json.dumps(layout["generation"]),
                          "--model.generation_per_type", json.dumps(layout.get("generation_per_type", {}))])
    metrics = json.loads((Path(tested.trainer.log_dir) / "metrics.json").read_text())
    primary = metrics["overall"]["primary"]  # the metric of each question type
    name = next(iter(primary.values())) if len(primary) == 1 else "overall score (mean of " + \
        ", ".join(f"{question_type} {metric}" for question_type, metric in primary.items()) + ")"
    return {"held_out_loss": held_out_loss, "metric": metrics["overall"]["score"], "metric_name": name,
            "metrics": metrics}
