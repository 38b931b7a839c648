"""Wrapping a causal LM with any PEFT method given as a ``peft.PeftConfig`` in YAML."""

import copy

from peft import PeftConfig, get_peft_model
from peft.tuners.lora import LoraConfig


def prepare_peft_config(peft_config: PeftConfig) -> PeftConfig:
    """A copy with the defaults this project promises: causal-LM task, all linear layers targeted."""
    config = copy.deepcopy(peft_config)
    if getattr(config, "task_type", None) is None:
        config.task_type = "CAUSAL_LM"
    if hasattr(config, "target_modules") and config.target_modules is None and isinstance(config, LoraConfig):
        config.target_modules = "all-linear"
    return config


def apply_peft(model, peft_config: PeftConfig | None):
    """No config means full fine-tuning: the model is returned with every weight trainable."""
    if peft_config is None:
        return model
    return get_peft_model(model, prepare_peft_config(peft_config))


def trainable_parameter_counts(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
