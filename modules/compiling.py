"""``model.compile``: the backbone's repeated blocks compiled with ``torch.compile``, block by block.

Compiling each decoder layer (the class transformers lists in ``_no_split_modules``), not the
whole model, is what makes compilation affordable: every layer runs the same code, so one compiled
graph serves all of them (the first step compiles once, not once per layer), and the PEFT
wrapper, the heads' ``logits_to_keep`` masks and the loss stay eager Python around them.
Sequence lengths change from batch to batch, so shapes are compiled dynamic rather than
recompiled per length.

Generation (predict, test, validation answers) runs the same layers eagerly: a KV cache makes each
layer read its own index, which would compile one graph per layer and a new one per cache length,
for decoding steps that are short anyway.

The first optimizer step carries the compile time; the throughput figures report it apart
(``time/first_step_seconds``) so the steady-state tokens/s are not diluted by it.
"""

import contextlib

import torch
from torch import nn

OPTION = "model.compile"


def repeated_block_classes(model: nn.Module) -> set[str]:
    """The class names of the model's repeated blocks (its decoder layers), as transformers lists them."""
    for module in model.modules():
        names = getattr(module, "_no_split_modules", None)
        if names:
            return set(names)
    return set()


def compile_repeated_blocks(model: nn.Module) -> int:
    """Compiles every repeated block of ``model`` in place; returns how many were compiled."""
    classes = repeated_block_classes(model)
    blocks = [module for module in model.modules() if type(module).__name__ in classes]
    if not blocks:
        raise ValueError(f"{OPTION}: {type(model).__name__} names no repeated block (_no_split_modules) "
                         f"to compile; leave {OPTION} off for this model")
    for block in blocks:
        block.compile(dynamic=True)
    return len(blocks)


def eager_generation():
    """A context in which compiled blocks run their plain Python code (for generation with a cache)."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()
