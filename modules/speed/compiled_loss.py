"""The LM loss compiled: cross-entropy over the kept logits as one fused kernel per pass.

transformers' causal-LM loss upcasts the (kept, vocabulary) logits to float32 (a full copy), runs
``log_softmax`` (another), picks the targets, and in backward fills a zero gradient, runs the
softmax backward and casts the gradient back: five passes over 49 152 (SmolLM2) or 151 936 (Qwen)
entries per trained token. Compiled, the cast, the log-sum-exp and the pick are fused into one
read of the logits, and the gradient (softmax minus one-hot) is written once. On 2 CPU cores, for
884 trained tokens of SmolLM2 (bf16 logits), forward and backward took 237 ms eager and 60 ms
compiled; in a fit's 4 x 512-token micro-batch the eager loss was ~0.5 s of 6 s.

``SFTModule.configure_model`` installs it wherever it compiles the decoder layers
(``modules/speed/compiling.py``), as the model's ``loss_function``: the heads' calls (``forward_keeping``) and whatever peft adds to the loss are
unchanged. The same numbers as transformers' loss, to float32 rounding (tests/modules/speed/test_compiled_loss.py).
"""

import torch
from torch import nn

from core.constants import IGNORE_INDEX


def summed_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Sum over the (tokens, vocabulary) ``logits`` of the float32 cross-entropy against ``targets``."""
    return nn.functional.cross_entropy(logits.float(), targets, ignore_index=ignore_index, reduction="sum")


_compiled_summed_cross_entropy = torch.compile(summed_cross_entropy, dynamic=True)


def compiled_causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor | None, vocab_size: int,
                            num_items_in_batch: torch.Tensor | int | None = None, ignore_index: int = IGNORE_INDEX,
                            shift_labels: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
    """transformers' ``ForCausalLMLoss`` (same signature, same result): the summed loss divided by
    ``num_items_in_batch`` when given, else the mean over the trained tokens."""
    if shift_labels is None:  # labels of the input positions: each position predicts the next one
        shift_labels = nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    targets = shift_labels.reshape(-1).to(logits.device)
    total = _compiled_summed_cross_entropy(logits.reshape(-1, vocab_size), targets, ignore_index)
    if num_items_in_batch is None:
        return total / (targets != ignore_index).sum()
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def compile_loss(model: nn.Module) -> None:
    """Makes the transformers model inside ``model`` (maybe PEFT-wrapped) compute its LM loss compiled."""
    base_model = model.get_base_model() if hasattr(model, "get_base_model") else model
    base_model.loss_function = compiled_causal_lm_loss
