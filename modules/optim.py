"""Optimizer parameter groups and learning-rate schedules."""

from typing import Literal, get_args

from transformers import get_scheduler

Schedule = Literal["cosine", "linear", "constant"]
SCHEDULES: tuple[str, ...] = get_args(Schedule)


def parameter_groups(named_parameters, head_lr: float | None = None) -> list[dict]:
    """Trainable parameters split so biases and norm weights (1-D tensors) get no weight decay.

    With ``head_lr``, the head's own parameters (names starting ``head.``, e.g. a choice classifier
    that starts from random weights while the backbone is pretrained) get that learning rate.
    """
    decay, no_decay, head = [], [], []
    for name, parameter in named_parameters:
        if not parameter.requires_grad:
            continue
        if head_lr is not None and name.startswith("head."):
            head.append(parameter)
        else:
            (no_decay if parameter.ndim < 2 else decay).append(parameter)
    groups = [{"params": decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if head:
        groups.append({"params": head, "lr": head_lr})
    return groups


def warmup_steps(warmup: float, total_steps: int) -> int:
    """``warmup`` below 1 is a fraction of all optimizer steps, otherwise a step count."""
    return int(warmup * total_steps) if 0 < warmup < 1 else int(warmup)


def schedule(optimizer, name: str, warmup: float, total_steps: int):
    """Warmup then cosine/linear decay (or constant), stepped once per optimizer step."""
    if name not in SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {SCHEDULES}, got '{name}'")
    hf_name = "constant_with_warmup" if name == "constant" else name
    return get_scheduler(hf_name, optimizer, num_warmup_steps=warmup_steps(warmup, total_steps),
                         num_training_steps=total_steps)
