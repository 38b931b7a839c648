"""Bad numerics: a non-finite step stops the run (or is skipped); an exploding loss warns.

Checked once per optimizer step, in ``on_before_optimizer_step``: the step's gradients are in
(already averaged across data-parallel ranks, not yet clipped) and the weights are still those of
the last good step. The step's loss is the sum of what each micro-batch's backward was given
(``on_before_backward``: each is its share of the step's token mean, the value the module logs as
``train/loss``), and the batch ids come from ``on_train_batch_start``.

- A non-finite loss or gradient norm, with ``on_nonfinite: stop``, raises ``NonFiniteStepError``
  naming the global step (the x of ``train/loss`` in TensorBoard) and the record ids of the step's
  batches. The optimizer never takes that step, no checkpoint is written after it, so the last
  ``last.ckpt`` holds the last good weights. With ``skip``, the step's gradients are dropped (the
  optimizer steps over no gradient: weights and its state stay as they were), a warning names the
  step and ids, and ``train/skipped_steps`` counts them (kept in checkpoints).
- A finite loss above ``explode_factor`` times its running mean (an exponential mean over about
  the last 50 steps, checked from the 5th step) warns, at most once every ``warn_every_n_steps``.

Under fp16 mixed precision the gradient scaler itself skips steps with overflowing gradients, so
there only the loss is checked.
"""

import math
from typing import Literal

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

MEAN_DECAY = 0.98  # the running mean's memory: about 1 / (1 - 0.98) = 50 steps
MEAN_WARMUP_STEPS = 4  # steps in the running mean before a loss is compared with it


class NonFiniteStepError(ValueError):
    """A training step whose loss or gradients are inf or nan (a ValueError: `sft` says it in one line)."""


class Numerics(Callback):
    def __init__(self, on_nonfinite: Literal["stop", "skip"] = "stop", explode_factor: float = 10.0,
                 warn_every_n_steps: int = 100):
        """
        Args:
            on_nonfinite: What a step with an inf/nan loss or gradient norm does: ``stop`` the run
                (before the optimizer step, so no broken weights are saved) or ``skip`` the step
                (its gradients are dropped; counted as ``train/skipped_steps``).
            explode_factor: Warn when a step's loss exceeds this many times its running mean; 0: never.
            warn_every_n_steps: At most one explosion warning in this many optimizer steps.
        """
        super().__init__()
        self.on_nonfinite = on_nonfinite
        self.explode_factor = explode_factor
        self.warn_every_n_steps = warn_every_n_steps
        self.skipped_steps = 0
        self._step_loss: torch.Tensor | float = 0.0  # summed over the current step's micro-batches
        self._step_ids: list[str] = []
        self._mean_sum, self._mean_steps = 0.0, 0  # exponential running mean, before bias correction
        self._warned_at: int | None = None

    # The current step: its micro-batches' ids and losses ------------------------------------------
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step_ids.extend(batch.get("ids", []) if isinstance(batch, dict) else [])

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        self._step_loss = self._step_loss + loss.detach()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        loss, grad_norm = self._loss_and_grad_norm(trainer, optimizer)
        ids, step = self._step_ids, trainer.global_step
        self._step_loss, self._step_ids = 0.0, []
        if math.isfinite(loss) and math.isfinite(grad_norm):
            self._check_explosion(loss, step, ids)
        else:
            self._non_finite(optimizer, f"loss {loss:.4g}, gradient norm {grad_norm:.4g} "
                             f"at global step {step} (batch ids: {', '.join(map(str, ids))})")
        if self.on_nonfinite == "skip":  # a flat line at 0 says no step was skipped
            pl_module.log("train/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False,
                          batch_size=1)

    def _loss_and_grad_norm(self, trainer, optimizer) -> tuple[float, float]:
        """One device sync for both figures."""
        loss = torch.as_tensor(self._step_loss, dtype=torch.float32)
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads or getattr(trainer.precision_plugin, "scaler", None) is not None:
            return float(loss), 0.0  # fp16: the scaler skips overflowing gradients itself
        norm = torch.nn.utils.get_total_norm(grads, error_if_nonfinite=False)
        loss_value, norm_value = torch.stack([loss.to(norm.device), norm.float()]).tolist()
        return loss_value, norm_value

    def _non_finite(self, optimizer, what: str) -> None:
        if self.on_nonfinite == "stop":
            raise NonFiniteStepError(
                f"non-finite training step: {what}; stopped before the optimizer step, so the last saved "
                "checkpoint holds the last good weights (lower the learning rate, check those records, "
                "or pass --numerics.on_nonfinite skip)")
        optimizer.zero_grad(set_to_none=True)  # no gradient: the optimizer leaves weights and state alone
        self.skipped_steps += 1
        rank_zero_warn(f"skipped a non-finite training step: {what}; {self.skipped_steps} skipped so far")

    def _check_explosion(self, loss: float, step: int, ids: list) -> None:
        if self._mean_steps >= MEAN_WARMUP_STEPS and self.explode_factor > 0:
            mean = self._mean_sum / (1 - MEAN_DECAY**self._mean_steps)
            recently_warned = self._warned_at is not None and step - self._warned_at < self.warn_every_n_steps
            if mean > 0 and loss > self.explode_factor * mean and not recently_warned:
                self._warned_at = step
                rank_zero_warn(
                    f"loss {loss:.4g} at global step {step} is {loss / mean:.1f}x its running mean {mean:.4g} "
                    f"(batch ids: {', '.join(map(str, ids))}); warned at most once every "
                    f"{self.warn_every_n_steps} steps (--numerics.explode_factor, --numerics.warn_every_n_steps)")
        self._mean_sum = MEAN_DECAY * self._mean_sum + (1 - MEAN_DECAY) * loss
        self._mean_steps += 1

    # Checkpoints: the skip count and the running mean carry over a resume -------------------------
    def state_dict(self) -> dict:
        return {"skipped_steps": self.skipped_steps, "mean_sum": self._mean_sum, "mean_steps": self._mean_steps}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped_steps = state_dict.get("skipped_steps", 0)
        self._mean_sum = state_dict.get("mean_sum", 0.0)
        self._mean_steps = state_dict.get("mean_steps", 0)
