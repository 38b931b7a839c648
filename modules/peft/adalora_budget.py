"""AdaLoRA's rank budget, run from the training loop by a callback of its own.

AdaLoRA starts every adapted layer at ``init_r`` and prunes singular values towards an average of
``target_r`` on a schedule of optimizer steps (``tinit`` steps untouched, a cubic budget decrease
every ``deltaT`` steps, the last ``tfinal`` steps at the final ranks). peft leaves four things to
the training loop, all done by ``AdaLoraBudget`` (which ``SFTModule.configure_callbacks`` adds
when the method is AdaLoRA, so a plain ``Trainer`` gets it too):

1. ``total_step``: the schedule's length; ``modules.peft.wrapping.AdaLoraConfig`` lets it be left out
   and it is the trainer's number of optimizer steps when fit starts; ``tinit``/``tfinal`` below 1
   are fractions of it, so one YAML fits a 1-step smoke run and a full one;
2. ``update_and_allocate`` after every optimizer step, while the step's gradients still exist
   (the importance scores are |weight × gradient|; Lightning zeroes them at the next step's start);
3. the share of the orthogonal regulariser (``orth_reg_weight`` × ‖PᵀP − I‖) peft adds to the loss
   of every forward given labels: our loss is a mean over the whole optimizer step, summed over
   micro-batches, so its share is 1/accumulate_grad_batches in training (counted once per step)
   and 0 in validation and test (``val/loss`` stays the language-model loss, comparable across methods);
4. the budget state that is not in the weights (the rank pattern, the importance averages), kept
   in the checkpoint so a resumed run goes on with the same ranks.
"""

import peft
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from peft import PeftConfig


CHECKPOINT_KEY = "adalora_budget"


class AdaLoraBudget(Callback):
    """Runs AdaLoRA's schedule for ``pl_module.model`` (configured by ``pl_module.peft_config``)."""

    def __init__(self):
        self._steps_seen = 0

    def on_fit_start(self, trainer, pl_module) -> None:
        """The trainer's data is set up by now: the schedule takes its step count from it."""
        warning = set_adalora_total_step(pl_module.model, pl_module.peft_config,
                                         int(trainer.estimated_stepping_batches))
        if warning:
            rank_zero_warn(warning)
        self._steps_seen = trainer.global_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        weigh_adalora_regulariser(pl_module.model, pl_module.peft_config, 1 / trainer.accumulate_grad_batches)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        weigh_adalora_regulariser(pl_module.model, pl_module.peft_config, 0.0)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        weigh_adalora_regulariser(pl_module.model, pl_module.peft_config, 0.0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        """After a micro-batch that ended an optimizer step, with that step's gradients still there."""
        if trainer.global_step > self._steps_seen:
            self._steps_seen = trainer.global_step
            update_adalora_budget(pl_module.model, trainer.global_step - 1)  # peft counts steps from 0

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        budget_state = adalora_budget_state(pl_module.model)
        if budget_state is not None:
            checkpoint[CHECKPOINT_KEY] = budget_state

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        restore_adalora_budget_state(pl_module.model, checkpoint.get(CHECKPOINT_KEY))


def adalora_config(model) -> peft.AdaLoraConfig | None:
    """The wrapped model's own (live) AdaLoRA config; None for any other method or full fine-tuning."""
    config = getattr(model, "active_peft_config", None)
    return config if isinstance(config, peft.AdaLoraConfig) else None


def phase_steps(share: float, total: int) -> int:
    """A fraction of all optimizer steps if below 1 (rounded down, so a short run keeps steps for
    pruning between the two phases), else a step count.

    >>> phase_steps(0.1, 20), phase_steps(0.2, 1), phase_steps(3, 20)
    (2, 0, 3)
    """
    return int(share * total) if 0 < share < 1 else int(share)


def set_adalora_total_step(model, configured: PeftConfig | None, trainer_steps: int) -> str | None:
    """Put AdaLoRA's schedule in steps of this run: ``total_step`` from the trainer where the config
    left it out, ``tinit``/``tfinal`` fractions turned into step counts.

    Returns a warning when the config's own total_step differs from the trainer's steps (the
    schedule then ends early, or never reaches its final ranks); None otherwise.
    """
    live = adalora_config(model)
    if live is None:
        return None
    total = configured.total_step or trainer_steps
    live.tinit, live.tfinal = phase_steps(configured.tinit, total), phase_steps(configured.tfinal, total)
    if live.tinit >= total - live.tfinal:
        raise ValueError(
            f"AdaLoRA's schedule does not fit this run: tinit ({live.tinit} steps) and tfinal ({live.tfinal} steps) "
            f"leave no step for pruning ranks in {total} optimizer steps. Lower model.peft_config.init_args.tinit/"
            "tfinal (fractions below 1 follow the run's length) or train for more steps."
        )
    live.total_step = total
    if total != trainer_steps:
        return (f"AdaLoRA total_step is {total} but this fit runs {trainer_steps} optimizer steps; leave "
                "total_step out (class_path: modules.peft.wrapping.AdaLoraConfig) to follow the trainer")
    return None


def update_adalora_budget(model, step_index: int) -> None:
    """AdaLoRA's importance update and rank pruning for the optimizer step ``step_index`` (0-based);
    call after ``optimizer.step()`` and before the gradients are zeroed. No-op for other methods."""
    if adalora_config(model) is not None:
        model.base_model.update_and_allocate(step_index)


def weigh_adalora_regulariser(model, configured: PeftConfig | None, share: float) -> None:
    """Set the share of the configured ``orth_reg_weight`` that peft adds to each forward's loss."""
    live = adalora_config(model)
    if live is not None:
        live.orth_reg_weight = configured.orth_reg_weight * share


def adalora_budget_state(model) -> dict | None:
    """What AdaLoRA's schedule holds outside the weights, for the checkpoint; None for other methods."""
    if adalora_config(model) is None:
        return None
    allocator = model.base_model.rankallocator
    return {"rank_pattern": adalora_config(model).rank_pattern, "ipt": allocator.ipt,
            "exp_avg_ipt": allocator.exp_avg_ipt, "exp_avg_unc": allocator.exp_avg_unc}


def restore_adalora_budget_state(model, state: dict | None) -> None:
    """Put a checkpoint's budget state back, its importance averages on their parameters' devices."""
    if state is None or adalora_config(model) is None:
        return
    adalora_config(model).rank_pattern = state["rank_pattern"]
    allocator = model.base_model.rankallocator
    devices = {name: parameter.device for name, parameter in model.base_model.model.named_parameters()}
    for statistic in ("ipt", "exp_avg_ipt", "exp_avg_unc"):
        setattr(allocator, statistic, {name: scores.to(devices[name]) for name, scores in state[statistic].items()})
