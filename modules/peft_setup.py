"""Wrapping a causal LM with any PEFT method given as a ``peft.PeftConfig`` in YAML, and the one
method whose training needs more than a wrapper: AdaLoRA.

AdaLoRA starts every adapted layer at ``init_r`` and prunes singular values towards an average of
``target_r`` on a schedule of optimizer steps (``tinit`` steps untouched, a cubic budget decrease
every ``deltaT`` steps, the last ``tfinal`` steps at the final ranks). peft leaves three things to
the training loop, done by ``SFTModule`` with the functions at the end of this file:

1. ``total_step``: the schedule's length; ``modules.peft_setup.AdaLoraConfig`` lets it be left out
   and takes the trainer's number of optimizer steps when fit starts (peft's own class refuses None),
   and takes ``tinit``/``tfinal`` as fractions of it, so one YAML fits a 1-step smoke run and a full one;
2. ``update_and_allocate`` after every optimizer step, while the step's gradients still exist
   (the importance scores are |weight × gradient|);
3. the budget state that is not in the weights (the rank pattern, the importance averages), kept
   in the Lightning checkpoint so a resumed run goes on with the same ranks.

peft also adds AdaLoRA's orthogonal regulariser (``orth_reg_weight`` × ‖PᵀP − I‖) to the loss of
every forward pass given labels. Our loss is a mean over the whole optimizer step, summed over
micro-batches, so the regulariser's share is set to 1/accumulate_grad_batches in training (counted
once per step, whatever the accumulation) and to 0 in validation and test (``val/loss`` stays the
language-model loss, comparable across methods).
"""

import copy
from dataclasses import dataclass, field

import peft
from peft import IA3Config, LoHaConfig, LoKrConfig, LoraConfig, PeftConfig, get_peft_model

from modules.optim import warmup_steps

# Methods whose ``target_modules`` accept peft's "all-linear" (AdaLoRA is a LoraConfig). IA3's
# ``feedforward_modules`` (the layers scaled at their input) then comes from peft's table per
# architecture (down_proj for Llama/Qwen2), a subset of all linear layers as peft requires.
ALL_LINEAR_BY_DEFAULT = (LoraConfig, IA3Config, LoHaConfig, LoKrConfig)


@dataclass
class AdaLoraConfig(peft.AdaLoraConfig):
    """peft's AdaLoraConfig, with its schedule measured in the run's own steps: ``total_step`` may be
    left out (then it is the trainer's number of optimizer steps, set when fit starts), and
    ``tinit``/``tfinal`` below 1 are fractions of it, as ``model.warmup`` is (peft's own class
    refuses a missing total_step and takes step counts only)."""

    tinit: float = field(default=0, metadata={"help": "Steps (or below 1: share of all steps) before pruning."})
    tfinal: float = field(default=0, metadata={"help": "Steps (or below 1: share of all steps) at the final ranks."})

    def __post_init__(self):
        if self.total_step is not None:
            super().__post_init__()
            return
        self.total_step = self.tinit + self.tfinal + 1  # a stand-in so peft checks every other field
        super().__post_init__()
        self.total_step = None


def prepare_peft_config(peft_config: PeftConfig) -> PeftConfig:
    """A copy with the defaults this project promises: causal-LM task, all linear layers targeted."""
    config = copy.deepcopy(peft_config)
    if getattr(config, "task_type", None) is None:
        config.task_type = "CAUSAL_LM"
    if isinstance(config, ALL_LINEAR_BY_DEFAULT) and config.target_modules is None:
        config.target_modules = "all-linear"
    return config


def apply_peft(model, peft_config: PeftConfig | None):
    """No config means full fine-tuning: the model is returned with every weight trainable."""
    if peft_config is None:
        return model
    return get_peft_model(model, prepare_peft_config(peft_config))


def parameter_count(parameter) -> int:
    """Weights a parameter stands for: bitsandbytes packs 4-bit weights two (or more) per element."""
    if type(parameter).__name__ == "Params4bit":
        storage = getattr(parameter, "quant_storage", None)
        return parameter.numel() * 2 * (storage.itemsize if storage is not None else 1)
    return parameter.numel()


def trainable_parameter_counts(module) -> tuple[int, int]:
    """(trainable, total) parameter counts, each shared tensor once."""
    parameters = list(module.parameters())
    trainable = sum(parameter_count(p) for p in parameters if p.requires_grad)
    return trainable, sum(parameter_count(p) for p in parameters)


# AdaLoRA ------------------------------------------------------------------------------------------
def adalora_config(model) -> peft.AdaLoraConfig | None:
    """The wrapped model's own (live) AdaLoRA config; None for any other method or full fine-tuning."""
    config = getattr(model, "active_peft_config", None)
    return config if isinstance(config, peft.AdaLoraConfig) else None


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
    # warmup_steps: "a fraction of all optimizer steps if below 1, else a step count", as model.warmup.
    live.tinit, live.tfinal = warmup_steps(configured.tinit, total), warmup_steps(configured.tfinal, total)
    if live.tinit >= total - live.tfinal:
        raise ValueError(
            f"AdaLoRA's schedule does not fit this run: tinit ({live.tinit} steps) and tfinal ({live.tfinal} steps) "
            f"leave no step for pruning ranks in {total} optimizer steps. Lower model.peft_config.init_args.tinit/"
            "tfinal (fractions below 1 follow the run's length) or train for more steps."
        )
    live.total_step = total
    if total != trainer_steps:
        return (f"AdaLoRA total_step is {total} but this fit runs {trainer_steps} optimizer steps; leave "
                "total_step out (class_path: modules.peft_setup.AdaLoraConfig) to follow the trainer")
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
