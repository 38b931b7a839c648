"""One side of ``benchmarks/vs_trl_gpu.py``, in its own process: TRL's ``SFTTrainer`` or ``sft fit``.

Both sides are metered by the same ``StepClock``, from hooks each trainer calls at the same points:

- peak memory: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()`` when
  training starts (the model built and on the device; the optimizer state comes after), so it
  counts weights, gradients, optimizer state and activations; on a CPU, the process's peak RSS;
- tokens/s over the steady state: the real (not padding) tokens of the optimizer steps after the
  first ``warmup_steps``, divided by the time from the end of the last warm-up step to the end of
  the last step, the clock read after ``torch.cuda.synchronize()``;
- each optimizer step's loss (a mean over the step's trained tokens on both sides).

A spec (JSON, written by the driver) says what to run; the result (JSON) goes back to it.
"""

import json
import time
from pathlib import Path

import torch
import yaml
from lightning.fabric.utilities.throughput import get_available_flops
from lightning.pytorch.callbacks import Callback

from callbacks.memory import cpu_peak_rss_mib
from core.batch_layout import examples_in, real_tokens_in

MIB = 2**20
LAST_STEPS = 5  # the final loss is the mean of the last steps' losses: one step's batch is noisy


class StepClock:
    """Real tokens, sequences and end time of each optimizer step; peak memory since training started."""

    def __init__(self):
        self.cuda = False
        self.started = 0.0
        self.step_ends: list[float] = []
        self.step_tokens: list[int] = []
        self.step_sequences: list[int] = []
        self._tokens = self._sequences = 0

    def start(self, cuda: bool) -> None:
        self.cuda = cuda
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.started = time.perf_counter()

    def add_batch(self, batch: dict) -> None:
        self._tokens += real_tokens_in(batch)
        self._sequences += examples_in(batch)

    def end_step(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self.step_ends.append(time.perf_counter())
        self.step_tokens.append(self._tokens)
        self.step_sequences.append(self._sequences)
        self._tokens = self._sequences = 0

    def figures(self, warmup_steps: int) -> dict:
        """Steady-state tokens/s (all steps if there are no more than ``warmup_steps``), totals, peak."""
        warmup = warmup_steps if len(self.step_ends) > warmup_steps else 0
        window_start = self.step_ends[warmup - 1] if warmup else self.started
        seconds = self.step_ends[-1] - window_start if self.step_ends else 0.0
        tokens = sum(self.step_tokens[warmup:])
        peak_mib = torch.cuda.max_memory_allocated() / MIB if self.cuda else cpu_peak_rss_mib()
        return {"steps": len(self.step_ends), "warmup_steps": warmup, "real_tokens": sum(self.step_tokens),
                "sequences": sum(self.step_sequences), "measured_tokens": tokens, "measured_seconds": seconds,
                "tokens_per_second": tokens / seconds if seconds > 0 else None, "peak_mib": peak_mib,
                "peak_memory_kind": "cuda_allocated" if self.cuda else "cpu_rss"}


def final_loss(losses: list[float]) -> float | None:
    last = [loss for loss in losses if loss is not None][-LAST_STEPS:]
    return sum(last) / len(last) if last else None


def peak_bf16_flops(cuda: bool) -> float | None:
    """The device's dense bf16 peak from Lightning's table (None on a CPU or an unknown GPU)."""
    return get_available_flops(torch.device("cuda"), torch.bfloat16) if cuda else None


# TRL ----------------------------------------------------------------------------------------------
def trl_optimizer(method_config: dict) -> tuple[tuple[type, dict] | None, dict]:
    """(optimizer_cls_and_kwargs for TRL's Trainer, the config's optimizer arguments). AdamW is left
    to the Trainer (None): its default is the same AdamW with PyTorch's fused step, as users get it."""
    optimizer = method_config["model"]["optimizer"]
    arguments = dict(optimizer.get("init_args", {}))
    if optimizer["class_path"] == "torch.optim.AdamW":
        return None, arguments
    module, _, name = optimizer["class_path"].rpartition(".")
    return (getattr(__import__(module, fromlist=[name]), name), arguments), arguments


def run_trl(spec: dict) -> dict:
    """TRL's SFTTrainer on the records as prompt-completion conversations (answers-only loss)."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from core.tokenizer import load_tokenizer
    from modules.backbone.loading import load_causal_lm

    method_config = yaml.safe_load(Path(spec["method_config"]).read_text())
    model_settings, cuda = method_config["model"], spec["device"] == "cuda"
    clock = StepClock()

    class MeteredSFTTrainer(SFTTrainer):
        def training_step(self, model, inputs, *args, **kwargs):
            clock.add_batch(inputs)  # before compute_loss may take keys out of the batch
            return super().training_step(model, inputs, *args, **kwargs)

    class Meter(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            clock.start(cuda)

        def on_step_end(self, args, state, control, **kwargs):
            clock.end_step()

    torch.manual_seed(spec["seed"])  # the same random weights as ours (the same loader and seed)
    model = load_causal_lm(spec["architecture"], "float32", quantization=model_settings.get("quantization"),
                           init_from_config=True)
    records = [json.loads(line) for line in Path(spec["train_path"]).read_text().splitlines()]
    rows = [{"prompt": record["messages"][:-1], "completion": record["messages"][-1:]} for record in records]
    optimizer_cls_and_kwargs, optimizer_args = trl_optimizer(method_config)
    peft_args = (model_settings.get("peft_config") or {}).get("init_args")
    config = SFTConfig(
        output_dir=spec["work_dir"], per_device_train_batch_size=spec["rows_per_step"], gradient_accumulation_steps=1,
        max_length=spec["max_length"], packing=spec["layout"] == "packed", num_train_epochs=1,
        learning_rate=optimizer_args["lr"], weight_decay=optimizer_args.get("weight_decay", 0.0),
        lr_scheduler_type={"constant": "constant_with_warmup"}.get(model_settings["lr_schedule"],
                                                                   model_settings["lr_schedule"]),
        warmup_steps=model_settings.get("warmup", 0.0), max_grad_norm=method_config["trainer"]["gradient_clip_val"],
        bf16=spec["precision"] == "bf16-mixed", use_cpu=not cuda, report_to="none", save_strategy="no",
        logging_steps=1, seed=spec["seed"], disable_tqdm=True, dataloader_drop_last=False)
    trainer = MeteredSFTTrainer(
        model=model, args=config, train_dataset=Dataset.from_list(rows),
        processing_class=load_tokenizer(spec["architecture"]),
        peft_config=LoraConfig(**peft_args, target_modules="all-linear", task_type="CAUSAL_LM") if peft_args else None,
        optimizer_cls_and_kwargs=optimizer_cls_and_kwargs, callbacks=[Meter()])
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {**clock.figures(spec["warmup_steps"]), "final_loss": final_loss(losses), "losses": losses,
            "peak_flops": peak_bf16_flops(cuda), "gradient_checkpointing": bool(config.gradient_checkpointing)}


# Ours ---------------------------------------------------------------------------------------------
class LightningStepMeter(Callback):
    """The StepClock on Lightning's hooks (given to ``sft fit`` as ``--trainer.callbacks``)."""

    def __init__(self):
        self.clock = StepClock()
        self.losses: list[float | None] = []
        self._steps_seen = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self.clock.start(trainer.strategy.root_device.type == "cuda")
        self._steps_seen = trainer.global_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.clock.add_batch(batch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self._steps_seen:  # a micro-batch inside an accumulation window
            return
        self._steps_seen = trainer.global_step
        self.clock.end_step()
        loss = trainer.callback_metrics.get("train/loss")  # logged once the step is whole
        self.losses.append(None if loss is None else float(loss))


def run_ours(spec: dict) -> dict:
    """``sft fit`` on the method's GPU-table config, with the recipe's data, lengths and batch."""
    from lightning_app.cli import SFTCLI

    meter_option = json.dumps([{"class_path": f"{__name__}.LightningStepMeter"}])
    cli = SFTCLI(args=[
        "fit", "--config", spec["method_config"], "--seed_everything", str(spec["seed"]),
        "--model.model_name_or_path", spec["architecture"], "--model.init_from_config", "true",
        "--data.train_path", spec["train_path"], "--data.val_path", "null", "--data.format", "messages",
        "--data.max_length", str(spec["max_length"]), "--data.batch_size", str(spec["rows_per_step"]),
        "--data.cache_tokens", "false", "--trainer.max_epochs", "1", "--trainer.accumulate_grad_batches", "1",
        "--trainer.precision", spec["precision"], "--trainer.accelerator", "gpu" if spec["device"] == "cuda" else "cpu",
        "--trainer.logger.init_args.save_dir", spec["work_dir"], "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.callbacks", meter_option,
        *spec["layout_options"], *spec["extra_options"]])
    meter = next(callback for callback in cli.trainer.callbacks if isinstance(callback, LightningStepMeter))
    return {**meter.clock.figures(spec["warmup_steps"]), "final_loss": final_loss(meter.losses),
            "losses": meter.losses, "peak_flops": peak_bf16_flops(meter.clock.cuda),
            "gradient_checkpointing": bool(cli.model.gradient_checkpointing)}


def run_side(spec_path: Path) -> None:
    """The child process's work: read the spec, run its side, write the result beside the spec."""
    spec = json.loads(spec_path.read_text())
    result = (run_trl if spec["side"] == "trl" else run_ours)(spec)
    Path(spec["result_path"]).write_text(json.dumps(result))
