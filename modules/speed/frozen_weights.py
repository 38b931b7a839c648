"""Frozen matrix weights stored in bf16 when the run computes in bf16 (``bf16-mixed``).

Under bf16 autocast every ``nn.Linear`` casts its float32 weight to bf16 at each forward, and keeps
that bf16 copy for the backward: a LoRA step of SmolLM2-135M thus holds the frozen weights twice
(float32 to keep, bf16 to compute with) and spends time casting them. A frozen weight never
changes, so storing it in bf16 once gives exactly the numbers autocast computes with, with no copy
and no cast. Measured (LoRA r16, 64 bundled records, 2-core CPU with avx512_bf16): peak memory
-470 MiB and ~8% more tokens/s (benchmarks/RESULTS.md).

Only what autocast already computes in bf16 is touched: the weights of plain ``nn.Linear`` layers
that are frozen and float32. Embeddings (and an output layer tied to them), norms and every
trainable weight keep float32, so the residual stream, the adapters and the optimizer states are
as before, and losses and adapter gradients are the same (tests/modules/speed/test_frozen_weights.py). Merging
copies the model to float32 first (modules/export/hf_folder.py), so the merged model holds the weights that
were trained with.

Applied to LoRA adapters without DoRA (rsLoRA included): DoRA and the prompt-learning methods
combine base weights with float32 tensors outside a matmul, where a bf16 weight would change the
arithmetic. Not applied to full fine-tuning (every weight trains in float32), quantized weights
(not float32) or sharded strategies (they manage dtypes themselves).
"""

import peft
import torch
from torch import nn

from modules.training.sharding import shards_training_state

PRECISION = "bf16-mixed"


def stores_frozen_in_bf16(model: nn.Module, precision: str, sharded: bool) -> bool:
    """Whether this run's frozen matrix weights are stored in bf16 (see the module docstring)."""
    if str(precision) != PRECISION or sharded or not isinstance(model, peft.PeftModel):
        return False
    config = model.active_peft_config
    return isinstance(config, peft.LoraConfig) and not getattr(config, "use_dora", False)


def store_frozen_weights_for_fit(model: nn.Module, trainer) -> int:
    """Applies the bf16 storage where this run is a fit that takes it; returns how many weights were
    cast (0 elsewhere). Fitting only: ``sft predict`` / ``sft test`` unmerge adapters after
    answering, which a bf16 weight would not take back as exactly as a float32 one."""
    if trainer is None or trainer.state.fn != "fit" or not stores_frozen_in_bf16(
            model, trainer.precision, shards_training_state(trainer.strategy)):
        return 0
    return store_frozen_linear_weights(model)


def store_frozen_linear_weights(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> int:
    """Casts the frozen float32 weights (and frozen biases) of ``model``'s ``nn.Linear`` layers to
    ``dtype`` in place, except weights shared with a non-Linear module (a tied output layer shares
    the input embeddings); returns how many weights were cast."""
    shared = {id(parameter) for module in model.modules() if not isinstance(module, nn.Linear)
              for parameter in module.parameters(recurse=False)}
    cast = 0
    for module in model.modules():
        if not isinstance(module, nn.Linear) or not _castable(module.weight, shared):
            continue
        module.weight = nn.Parameter(module.weight.detach().to(dtype), requires_grad=False)
        if module.bias is not None and _castable(module.bias, shared):
            module.bias = nn.Parameter(module.bias.detach().to(dtype), requires_grad=False)
        cast += 1
    return cast


def _castable(parameter: nn.Parameter, shared: set[int]) -> bool:
    return not parameter.requires_grad and parameter.dtype == torch.float32 and id(parameter) not in shared
