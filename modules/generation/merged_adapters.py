"""LoRA-family adapters merged into the base weights while answering, then taken out again.

An unmerged LoRA layer computes ``W x + s B (A x)``: two more small matmuls (and dropout and
scaling ops) per adapted layer and decoding step; merged, ``W' = W + s B A`` is one matmul. PEFT's
``merge_adapter`` / ``unmerge_adapter`` do this for every method that has weights to merge into
(LoRA, DoRA, rsLoRA, AdaLoRA, IA3, LoHa, LoKr ...). Prompt-learning methods have none, and a
quantized base would be requantized (lossy): both answer unmerged.

Unmerging subtracts what merging added, which in floating point does not give ``W`` back bit for
bit. Where training continues (validation answers during fit) the adapted layers' base weights
are copied before merging and copied back after, so training resumes from exactly the weights
it had; that copy costs their memory while answering. ``sft predict`` / ``sft test`` train nothing
afterwards and unmerge without a copy.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from peft import PeftModel
from torch.distributed.tensor import DTensor
from peft.tuners.tuners_utils import BaseTunerLayer

from modules.backbone.quantization import is_quantized
from modules.peft.methods import unmergeable_reason


def can_merge(model) -> bool:
    """A PEFT model whose active adapter has weights to merge into, on a base that is not quantized."""
    if not isinstance(model, PeftModel) or unmergeable_reason(model) is not None or is_quantized(model):
        return False
    return not any(isinstance(parameter, DTensor) for parameter in adapted_base_parameters(model))  # sharded: no


def adapted_base_parameters(model) -> list[torch.nn.Parameter]:
    """The parameters merging writes into: those of every adapted layer's base layer."""
    return [parameter for module in model.modules() if isinstance(module, BaseTunerLayer)
            for parameter in module.get_base_layer().parameters(recurse=False)]


@contextmanager
def adapters_merged(model, restore_exactly: bool) -> Iterator[bool]:
    """Within the block, ``model``'s adapters are merged (yields whether they are); after it they
    are unmerged, and with ``restore_exactly`` the base weights are bit for bit those before."""
    if not can_merge(model):
        yield False
        return
    saved = [(parameter, parameter.detach().clone()) for parameter in adapted_base_parameters(model)] \
        if restore_exactly else []
    with torch.no_grad():
        model.merge_adapter()
    try:
        yield True
    finally:
        with torch.no_grad():
            model.unmerge_adapter()  # PEFT's bookkeeping: its layers run the adapters again
            for parameter, weights in saved:
                parameter.copy_(weights)
