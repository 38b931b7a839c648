"""Optimizer parameter groups and learning-rate schedules."""

import inspect
import math
from typing import Literal, get_args

import torch
from transformers import get_scheduler

from modules.training.sharding import clean_name

Schedule = Literal["cosine", "linear", "constant"]
SCHEDULES: tuple[str, ...] = get_args(Schedule)


def one_dimensional_names(module) -> set[str]:
    """Names (without FSDP or compile wrappers) of ``module``'s 1-D weights, read while they are whole:
    FSDP shows every weight as a flat 1-D view of its shard, ZeRO-3 keeps the shape in ``ds_shape``."""
    return {clean_name(name) for name, parameter in module.named_parameters()
            if len(getattr(parameter, "ds_shape", parameter.shape)) < 2}


def parameter_groups(named_parameters, head_lr: float | None = None, one_dimensional: set[str] | None = None) -> list[dict]:
    """Trainable parameters split so biases and norm weights (1-D tensors) get no weight decay.

    ``one_dimensional``: the names (without FSDP's wrappers) of the 1-D weights, taken before the model
    was sharded: FSDP shows every weight as a flat 1-D view of its shard (all would lose weight decay).

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
            flat = clean_name(name) in one_dimensional if one_dimensional is not None else parameter.ndim < 2
            (no_decay if flat else decay).append(parameter)
    groups = [{"params": decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if head:
        groups.append({"params": head, "lr": head_lr})
    return groups


def learning_rates(param_groups: list[dict], has_head_group: bool) -> dict[str, float]:
    """This step's learning rate of each kind of parameter, by the name it is logged under:
    ``learning_rate`` for the model's (its 1-D weights' group differs only in weight decay, so one
    figure says it) and, where the head has its own (``head_lr``), ``learning_rate_head`` for the
    last group, where ``parameter_groups`` puts it (a checkpoint keeps the groups' order).

    >>> groups = [{"lr": 1e-4}, {"lr": 1e-4, "weight_decay": 0.0}, {"lr": 5e-2}]
    >>> learning_rates(groups, has_head_group=True)
    {'learning_rate': 0.0001, 'learning_rate_head': 0.05}
    >>> learning_rates(groups[:2], has_head_group=False)
    {'learning_rate': 0.0001}
    """
    rates = {"learning_rate": float(param_groups[0]["lr"])}
    if has_head_group and len(param_groups) > 1:
        rates["learning_rate_head"] = float(param_groups[-1]["lr"])
    return rates


def warmup_steps(warmup: float, total_steps: int) -> int:
    """``warmup`` below 1 is a fraction of all optimizer steps, rounded up as transformers'
    ``TrainingArguments.get_warmup_steps`` does (so a run matches TRL's schedule), else a step count.

    >>> warmup_steps(0.1, 12), warmup_steps(0.1, 50), warmup_steps(3, 12), warmup_steps(0.0, 12)
    (2, 5, 3, 0)
    """
    return math.ceil(warmup * total_steps) if 0 < warmup < 1 else int(warmup)


def schedule(optimizer, name: str, warmup: float, total_steps: int):
    """Warmup then cosine/linear decay (or constant), stepped once per optimizer step."""
    if name not in SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {SCHEDULES}, got '{name}'")
    hf_name = "constant_with_warmup" if name == "constant" else name
    return get_scheduler(hf_name, optimizer, num_warmup_steps=warmup_steps(warmup, total_steps),
                         num_training_steps=total_steps)


def with_fused_step(optimizer):
    """The same optimizer with PyTorch's fused step where it has one and the user chose no
    implementation (``fused``/``foreach`` unset): Adam and AdamW.

    Unset, torch picks its per-tensor loop on a CPU, which on SmolLM2-135M's full fine-tuning costs
    about 5 s an optimizer step on 2 cores against 0.7 s fused (same update; transformers' Trainer
    and so TRL default to the fused kernel too). Parameter groups and their settings are kept.
    """
    if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW):
        return optimizer
    if optimizer.defaults.get("fused") is not None or optimizer.defaults.get("foreach") is not None:
        return optimizer  # the user's choice
    if optimizer.defaults.get("differentiable") or not all(_fusable(p) for p in _parameters(optimizer)):
        return optimizer
    accepted = inspect.signature(type(optimizer).__init__).parameters  # AdamW's defaults hold more than it takes
    settings = {name: value for name, value in optimizer.defaults.items() if name in accepted}
    groups = [{**group, "fused": True} for group in optimizer.param_groups]
    fused = type(optimizer)(groups, **{**settings, "fused": True})
    # A fused step can also unscale fp16 gradients itself, which makes Lightning refuse gradient
    # clipping under mixed precision (it must unscale before clipping). Left to the GradScaler, the
    # unscaling happens first as for any optimizer (bf16 has no scaler at all): same update.
    fused._step_supports_amp_scaling = False
    return fused


def _parameters(optimizer) -> list:
    return [parameter for group in optimizer.param_groups for parameter in group["params"]]


def _fusable(parameter) -> bool:
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    return parameter.is_floating_point() and parameter.device.type in _get_fused_kernels_supported_devices()
