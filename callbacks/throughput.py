"""Training speed: seconds per epoch and per optimizer step, real tokens and samples per second, MFU.

One family of speed figures, not two. Lightning's ``ThroughputMonitor`` (which this class extended
until issue 28) logged a second one every step under ``train/device/...``, ``train/time``,
``train/lengths``, ``validate/...``: rolling figures over 20 batches that said the same as these
in other units, with an MFU taken against the peak of the precision *setting* (the float32 peak
for bfloat16 weights under ``32-true``), and cluttered the ``train`` section around the loss. These
are kept because they are what ``summary.json``, ``sft compare`` and the benchmarks report, so the
chart and the table agree. They count real tokens, not padding: padding is work the GPU does but
not work the run needed, and counting it would flatter a run that pads badly (shuffled batches of
mixed lengths) over one that groups by length.

At the end of every training epoch this logs whole-epoch figures, counted on its own clock with
validation time left out, and keeps them in ``summary`` for the run summary:
``time/epoch_seconds``, ``time/step_seconds`` (mean per optimizer step),
``throughput/tokens_per_second``, ``throughput/samples_per_second`` (also published as
``run_figures["speed"]`` on the module) and, where Lightning knows the
device's peak FLOP/s (CUDA GPUs in its table; never on CPU), ``throughput/mfu`` against the peak of
the dtype the matmuls really run in.

FLOPs (for MFU) are model FLOPs of the useful work, estimated per batch from its real tokens:
a matmul weight of N parameters costs 2·N·T forward over T tokens, 2·N·T backward for the
gradient with respect to its input and another 2·N·T for the gradient of the weight itself, which
only trainable weights need. So a batch costs (4·N + 2·N_trainable)·T: 6·N·T for full fine-tuning,
about 4·N·T for LoRA (frozen base, tiny adapters). Attention scores and mixing add
12·layers·heads·head_dim·L² per row of length L (4 forward, 8 backward; PaLM's convention, not
halved for causal masking). N excludes the input embedding (a lookup, not a matmul). The output
layer (hidden → vocabulary) counts only over the trained tokens: the heads project only those
positions (modules/heads/kept_logits.py); in evaluation, also the scored answer positions, which
are trained positions of the labelled records. Gradient-checkpointing's recomputed forward is not
counted: MFU measures useful work, not what the hardware redid.
"""

import time

import torch
from lightning.fabric.utilities.throughput import get_available_flops
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only

from callbacks.run_figures import publish

from core.batch_layout import example_lengths, examples_in, real_tokens_in
from core.step_loss import trained_tokens_in


def samples_in(batch: dict) -> int:
    """Examples (conversations) in a batch, padded or packed."""
    return examples_in(batch)


def matmul_parameter_counts(model: torch.nn.Module) -> tuple[tuple[int, int], tuple[int, int]]:
    """(all, trainable) parameters of the matmuls every token passes through, and of the output layer."""
    input_embedding = model.get_input_embeddings().weight
    output_weight = model.get_output_embeddings().weight
    body = [p for p in model.parameters() if p is not input_embedding and p is not output_weight]

    def counts(parameters):
        return sum(p.numel() for p in parameters), sum(p.numel() for p in parameters if p.requires_grad)

    return counts(body), counts([output_weight])


def attention_width(config) -> tuple[int, int]:
    """(layers, heads × head_dim) of a transformers config; grouped K/V heads are expanded for the scores."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_hidden_layers, config.num_attention_heads * head_dim


def training_flops(model: torch.nn.Module, batch: dict) -> int:
    """Forward + backward model FLOPs of one micro-batch (see the module docstring)."""
    (body, body_trainable), (output, output_trainable) = matmul_parameter_counts(model)
    row_lengths = example_lengths(batch)  # (examples,): attention stays inside each example, packed or not
    layers, width = attention_width(model.config)
    linear = (4 * body + 2 * body_trainable) * int(row_lengths.sum())
    output_layer = (4 * output + 2 * output_trainable) * trained_tokens_in(batch)
    attention = 12 * layers * width * int((row_lengths**2).sum())
    return linear + output_layer + attention


def forward_flops(model: torch.nn.Module, batch: dict) -> int:
    """Forward-only model FLOPs of one evaluation batch: a third of full fine-tuning's step (not logged:
    the callback below times training only)."""
    (body, _), (output, _) = matmul_parameter_counts(model)
    row_lengths = example_lengths(batch)
    layers, width = attention_width(model.config)
    return (2 * body * int(row_lengths.sum()) + 2 * output * trained_tokens_in(batch)
            + 4 * layers * width * int((row_lengths**2).sum()))


class SFTThroughputMonitor(Callback):
    def __init__(self):
        self.summary: dict[str, float] = {}
        self._epoch = _EpochTotals()
        self._validation_started: float | None = None

    # 1. FLOPs per batch -----------------------------------------------------------------------------
    # Batches differ in length, so the FLOPs are set per batch from that batch's real tokens (on the
    # module, where the epoch totals below read them).
    def on_train_batch_start(self, trainer, pl_module, batch: dict, batch_idx: int) -> None:
        pl_module.flops_per_batch = training_flops(pl_module.model, batch)

    # 2. Whole-epoch figures, on its own clock: training time only, validation left out --------------
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch = _EpochTotals(started=_synchronized_clock(trainer), step_at_start=trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch: dict, batch_idx: int) -> None:
        self._epoch.add(real_tokens_in(batch), samples_in(batch), pl_module.flops_per_batch)
        if self._epoch.first_step_end is None and trainer.global_step > self._epoch.step_at_start:
            self._epoch.end_first_step(_synchronized_clock(trainer))

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.training:  # validation inside a fit's epoch: its time is not training time
            self._validation_started = _synchronized_clock(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._validation_started is not None:
            self._epoch.validation_seconds += _synchronized_clock(trainer) - self._validation_started
            self._validation_started = None

    @rank_zero_only
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        seconds = _synchronized_clock(trainer) - self._epoch.started - self._epoch.validation_seconds
        if seconds <= 0 or self._epoch.samples == 0:
            return
        figures = {
            "time/epoch_seconds": seconds,
            "throughput/tokens_per_second": self._epoch.tokens / seconds,
            "throughput/samples_per_second": self._epoch.samples / seconds,
        }
        optimizer_steps = trainer.global_step - self._epoch.step_at_start
        if optimizer_steps > 0:
            figures["time/step_seconds"] = seconds / optimizer_steps
        figures.update(self._epoch.after_first_step(seconds))
        peak_flops = peak_flops_per_second(trainer, pl_module)
        if peak_flops:
            figures["throughput/mfu"] = self._epoch.flops / seconds / peak_flops
        self.summary = {name.split("/", 1)[1]: float(value) for name, value in figures.items()}
        self.summary["epoch_tokens"] = float(self._epoch.tokens)
        publish(pl_module, "speed", self.summary)
        for logger in trainer.loggers:
            logger.log_metrics(figures, step=trainer.global_step)


class _EpochTotals:
    """Real tokens, samples and FLOPs of the epoch's training batches, and its validation time."""

    def __init__(self, started: float = 0.0, step_at_start: int = 0):
        self.started, self.step_at_start = started, step_at_start
        self.tokens = self.samples = self.flops = 0
        self.validation_seconds = 0.0
        self.first_step_end: float | None = None
        self.tokens_in_first_step = 0

    def end_first_step(self, clock: float) -> None:
        self.first_step_end, self.tokens_in_first_step = clock, self.tokens

    def after_first_step(self, epoch_seconds: float) -> dict[str, float]:
        """The first optimizer step's time apart (it carries torch.compile's compilation and the
        allocator's warm-up) and the steady tokens/s of the steps after it."""
        if self.first_step_end is None:
            return {}
        first = self.first_step_end - self.started
        figures = {"time/first_step_seconds": first}
        if epoch_seconds - first > 0 and self.tokens > self.tokens_in_first_step:
            figures["throughput/tokens_per_second_after_first_step"] = (
                (self.tokens - self.tokens_in_first_step) / (epoch_seconds - first))
        return figures

    def add(self, tokens: int, samples: int, flops: int | None) -> None:
        self.tokens, self.samples, self.flops = self.tokens + tokens, self.samples + samples, self.flops + (flops or 0)


def _synchronized_clock(trainer) -> float:
    """Seconds, after queued GPU work has finished (else a GPU epoch would end before its kernels do)."""
    if trainer.strategy.root_device.type == "cuda":
        torch.cuda.synchronize(trainer.strategy.root_device)
    return time.perf_counter()


def peak_flops_per_second(trainer, pl_module) -> float | None:
    """The device's peak for the dtype the matmuls really run in; None on CPUs (no table for them).

    Lightning's ``ThroughputMonitor`` takes the dtype from the precision setting alone; with bfloat16
    weights under ``32-true`` it would measure against the float32 peak. This figure does not.
    """
    device = trainer.strategy.root_device
    if device.type != "cuda":
        return None
    return get_available_flops(device, compute_dtype(precision_dtype(trainer.precision), pl_module.model))


def precision_dtype(precision: str) -> torch.dtype:
    """The matmul dtype a Trainer precision setting implies ("bf16-mixed" → bfloat16, ...)."""
    setting = str(precision)
    if setting.startswith("bf16"):
        return torch.bfloat16
    if setting.startswith("16"):
        return torch.float16
    return torch.float64 if setting.startswith("64") else torch.float32


def compute_dtype(precision_dtype: torch.dtype, model: torch.nn.Module) -> torch.dtype:
    """The dtype the matmuls run in: the precision plugin's, or the weights' if those are narrower."""
    if precision_dtype != torch.float32:
        return precision_dtype
    weight_dtypes = {}
    for parameter in model.parameters():
        weight_dtypes[parameter.dtype] = weight_dtypes.get(parameter.dtype, 0) + parameter.numel()
    most_weights = max(weight_dtypes, key=weight_dtypes.get)
    return most_weights if most_weights in (torch.bfloat16, torch.float16) else precision_dtype
