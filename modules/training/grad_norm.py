"""The gradient norm of an optimizer step, before clipping: the first figure to read when a run diverges.

Read in ``SFTModule.on_before_optimizer_step``, which Lightning calls once every micro-batch of the step
has been backpropagated (gradients unscaled under fp16) and before ``trainer.gradient_clip_val``
clips them, so the figure is what clipping acts on, as TRL's ``grad_norm`` is. One pass over the
trainable gradients (LoRA: a few MB); under FSDP each rank holds a shard of them, so the squares are
added over the ranks first.
"""

from collections.abc import Callable, Iterable

import torch


def total_grad_norm(parameters: Iterable[torch.nn.Parameter],
                    sum_over_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor | None:
    """The L2 norm of all gradients together (None when no parameter has one, as under DeepSpeed);
    ``sum_over_ranks`` adds up the ranks' squared norms where the gradients are sharded.

    >>> weight = torch.nn.Parameter(torch.zeros(2)); weight.grad = torch.tensor([3.0, 0.0])
    >>> bias = torch.nn.Parameter(torch.zeros(1)); bias.grad = torch.tensor([4.0])
    >>> float(total_grad_norm([weight, bias]))
    5.0
    """
    gradients = [parameter.grad.detach() for parameter in parameters if parameter.grad is not None]
    if not gradients:
        return None
    squared = torch.nn.utils.get_total_norm(gradients, norm_type=2.0).float() ** 2
    if sum_over_ranks is not None:
        squared = sum_over_ranks(squared)
    return squared.sqrt()
