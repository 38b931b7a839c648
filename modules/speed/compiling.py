"""``model.compile``: the backbone's repeated blocks compiled with ``torch.compile``, block by block.

Compiling each decoder layer (the class transformers lists in ``_no_split_modules``), not the
whole model, is what makes compilation affordable: every layer runs the same code, so one compiled
graph serves all of them (the first step compiles once, not once per layer), and the PEFT
wrapper and the heads' ``logits_to_keep`` masks stay eager Python around them (the loss is compiled
apart, modules/speed/compiled_loss.py).
Sequence lengths change from batch to batch, so shapes are compiled dynamic rather than
recompiled per length.

Generation (predict, test, validation answers) runs the same layers eagerly: a KV cache makes each
layer read its own index, which would compile one graph per layer and a new one per cache length,
for decoding steps that are short anyway.

The first optimizer step carries the compile time; the throughput figures report it apart
(``time/first_step_seconds``) so the steady-state tokens/s are not diluted by it.
"""

import contextlib
import importlib.util
import os
import shutil

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from modules.peft.methods import active_config, learns_virtual_tokens
from modules.training.sharding import shards_training_state

OPTION = "model.compile"


def repeated_block_classes(model: nn.Module) -> set[str]:
    """The class names of the model's repeated blocks (its decoder layers), as transformers lists them."""
    for module in model.modules():
        names = getattr(module, "_no_split_modules", None)
        if names:
            return set(names)
    return set()


def compile_repeated_blocks(model: nn.Module) -> int:
    """Compiles the repeated blocks of ``model`` in place; returns how many were compiled.

    When the input embeddings are frozen (LoRA and the like), the first block's input is the only
    one that needs no gradient: compiled, it would be a graph of its own (dynamo guards on
    ``requires_grad``), one more compile (~15 s on 2 CPU cores) for 1 block in 30. It stays eager.

    Python floats are compiled as constants (``specialize_float``): with ``dynamic=True`` dynamo
    otherwise makes the layers' float attributes (RMSNorm's epsilon, LoRA's scaling) symbolic,
    traces the whole graph, finds them used as constants and traces again with them fixed; that
    first trace missed the compile cache every time. The first step of a warm-cache LoRA fit on
    2 CPU cores took 7.0 s with the retrace, 3.2 s without (SmolLM2-135M, 4 x 107 tokens)."""
    classes = repeated_block_classes(model)
    blocks = [module for module in model.modules() if type(module).__name__ in classes]
    if not blocks:
        raise ValueError(f"{OPTION}: {type(model).__name__} names no repeated block (_no_split_modules) "
                         f"to compile; leave {OPTION} off for this model")
    if len(blocks) > 1 and not first_block_input_needs_grad(model):
        blocks = blocks[1:]
    torch._dynamo.config.specialize_float = True
    for block in blocks:
        block.compile(dynamic=True)
    return len(blocks)


def first_block_input_needs_grad(model: nn.Module) -> bool:
    """Trainable input embeddings, or trainable virtual tokens put before them (prompt learning)."""
    if learns_virtual_tokens(active_config(model)):
        return True
    return model.get_input_embeddings().weight.requires_grad


def eager_generation():
    """A context in which compiled blocks run their plain Python code (for generation with a cache)."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()


AUTO_MIN_PARAMETERS = 50_000_000
"""Below this, ``auto`` leaves compilation off: a tiny model's steps are too short to win back the
compile time (~30 s on 2 CPU cores). SmolLM2-135M wins it back within ~100 micro-batches."""


def auto_compile_refusal(model: nn.Module, fitting: bool, device_type: str, *, quantized: bool,
                         gradient_checkpointing: bool, padding_free: bool, sharded: bool) -> str | None:
    """Why ``model.torch_compile: auto`` leaves the layers eager here; None when it compiles them.

    ``auto`` compiles only where compilation is known to pay and to work: training (generation runs
    eagerly anyway), a model big enough, a compiler for the device (a C++ compiler on a CPU, Triton
    on a CUDA GPU), and none of the paths it was not measured with (quantized weights, gradient
    checkpointing, packed batches, sharded strategies). On a CPU, dropout layers (LoRA's
    ``lora_dropout``) also keep it off: SmolLM2 LoRA with dropout 0.05 stepped no faster compiled
    (4.45-4.8 s against 4.6 s eager, 4 × 300 tokens), so the compile time would not be won back;
    the memory saving (8.1 → 6.4 GB in the demo fit) is then ``true``'s to choose."""
    parameters = sum(parameter.numel() for parameter in model.parameters())
    dropout = any(isinstance(module, nn.Dropout) and module.p > 0 for module in model.modules())
    reasons = [(not fitting, "not training"),
               (parameters < AUTO_MIN_PARAMETERS, f"a small model ({parameters / 1e6:.0f}M parameters)"),
               (device_type == "cpu" and dropout, "dropout layers on a CPU: compiled, they step no faster"),
               (quantized, "quantized weights"), (gradient_checkpointing, "gradient checkpointing"),
               (padding_free, "packed batches"), (sharded, "a sharded strategy"),
               (not has_compiler(device_type), f"no compiler for {device_type} (torch.compile needs a C++ "
                                               f"compiler on a CPU, Triton on a CUDA GPU)")]
    return next((reason for refused, reason in reasons if refused), None)


def has_compiler(device_type: str) -> bool:
    if device_type == "cpu":
        return any(shutil.which(name) for name in (os.environ.get("CXX", ""), "g++", "c++", "clang++") if name)
    if device_type == "cuda":
        return importlib.util.find_spec("triton") is not None
    return False


def compiles_this_run(setting: bool | str, model: nn.Module, trainer, *, quantized: bool,
                      gradient_checkpointing: bool) -> bool:
    """``model.torch_compile`` as given, or what ``auto`` decides for this run (``trainer`` may be None:
    no fit). A run compiled by ``auto`` falls back to eager where a graph fails to compile: it did not
    ask for compilation and should not die of it (torch prints why)."""
    if setting != "auto":
        return bool(setting)
    fitting = trainer is not None and trainer.state.fn == "fit"
    refusal = auto_compile_refusal(
        model, fitting, trainer.strategy.root_device.type if trainer is not None else "cpu",
        quantized=quantized, gradient_checkpointing=gradient_checkpointing,
        padding_free=getattr(getattr(trainer, "datamodule", None), "padding_free", False),
        sharded=trainer is not None and shards_training_state(trainer.strategy))
    if refusal is None:
        torch._dynamo.config.suppress_errors = True
    elif fitting:
        rank_zero_info(f"model.torch_compile auto: decoder layers left eager ({refusal})")
    return refusal is None
