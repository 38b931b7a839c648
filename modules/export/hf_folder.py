"""Exporting a trained model as a deployable Hugging Face folder, checked against the original.

Merges a PEFT adapter into the base weights (any method peft can merge: LoRA, DoRA, rsLoRA,
AdaLoRA, IA3, LoHa, LoKr, ...) or saves the fully fine-tuned model, reloads the saved folder the
plain way and compares its logits on a few chat prompts with the adapter model's, in float32:
``relative_error = max|merged - adapter| / max|adapter|``, recorded in ``merge_report.json``.
A folder that fails the check is renamed ``<output_dir>.failed`` and ``MergeVerificationError`` is
raised; methods with no weights to merge into (prompt tuning, P-tuning, prefix tuning) save the
adapter in ``<output_dir>/adapter`` and say so. ``callbacks/merge_adapters.py`` runs this at the
end of fit; it needs no trainer.
"""


import copy
import json
import os
import shutil
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from peft.utils.integrations import dequantize_module_weight
from torch import nn
from transformers import AutoModelForCausalLM

from core.disk_errors import checkpoints_intact, removed_on_write_fault
from datamodules.chat_tokens import prompt_ids_for_generation
from modules.backbone.quantization import is_quantized
from modules.heads.choice_export import CHOICE_HEAD_WEIGHTS, save_choice_head
from modules.peft.methods import unmergeable_reason

REPORT_FILE = "merge_report.json"
LORA_VARIANTS = {"use_dora": "dora", "use_rslora": "rslora"}

# Short and multi-turn, so the check covers the template's role headers and turn ends.
PROBE_CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 plus 3?"}],
    [{"role": "user", "content": "Name a prime number."}, {"role": "assistant", "content": "7"},
     {"role": "user", "content": "And an even one?"}],
]


class MergeVerificationError(RuntimeError):
    """The merged folder's logits differ from the adapter model's by more than allowed."""


# 2. Which method ----------------------------------------------------------------------------------
def describe_method(model) -> dict:
    """``method`` (peft type, or "full"), LoRA ``variants`` and whether the base is quantized."""
    quantized = is_quantized(model)
    if not isinstance(model, PeftModel):
        return {"method": "full", "variants": [], "quantized": quantized}
    config = model.active_peft_config
    variants = [name for option, name in LORA_VARIANTS.items() if getattr(config, option, False)]
    return {"method": getattr(config.peft_type, "value", str(config.peft_type)), "variants": variants,
            "quantized": quantized}


# 3. Merging ---------------------------------------------------------------------------------------
def float32_cpu_copy(model) -> nn.Module:
    """An eval-mode float32 copy on the CPU; the original is moved to the CPU for the copy and back,
    so the GPU never holds the model twice."""
    device = next(model.parameters()).device
    model.to("cpu")
    try:
        model_copy = copy.deepcopy(model)
    finally:
        model.to(device)
    return model_copy.float().eval()


def merge_float32(adapter_copy) -> nn.Module:
    """The merged plain model (in place: ``adapter_copy`` is consumed); a plain model as it is."""
    return adapter_copy.merge_and_unload() if isinstance(adapter_copy, PeftModel) else adapter_copy


def dequantized_adapter_copy(quantized_model: PeftModel) -> PeftModel:
    """QLoRA / 8-bit LoRA: a float32 CPU copy of the de-quantized base with the trained adapter on it.

    peft's own merge into a 4-bit layer re-quantizes the sum, losing the adapter's small update in
    rounding; instead each quantized weight is de-quantized (what the quantized model computes with),
    a plain float32 model is built from the config without ``quantization_config``, wrapped with
    the same peft config and given the trained adapter weights; ``save_merged`` merges it.
    """
    base = quantized_model.get_base_model()
    config = copy.deepcopy(base.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(dequantized_state(base, plain.state_dict().keys()))  # strict: every weight
    plain_adapter = get_peft_model(plain, copy.deepcopy(quantized_model.active_peft_config))
    adapter_state = {name: tensor.detach().to("cpu", torch.float32)
                     for name, tensor in get_peft_model_state_dict(
                         quantized_model, adapter_name=quantized_model.active_adapter).items()}
    loaded = set_peft_model_state_dict(plain_adapter, adapter_state)
    if loaded.unexpected_keys:
        raise RuntimeError(f"adapter weights found no place in the de-quantized copy: {loaded.unexpected_keys[:3]}")
    return plain_adapter.eval()


def dequantized_state(quantized_base, names) -> dict[str, torch.Tensor]:
    """Float32 CPU tensors for ``names`` (plain-model weight names) from a quantized, peft-wrapped base."""
    state = {}
    for name in names:
        module_path, _, attribute = name.rpartition(".")
        module = _unwrapped(quantized_base.get_submodule(module_path))
        tensor = _dequantized_weight(module) if attribute == "weight" else getattr(module, attribute)
        state[name] = tensor.detach().to("cpu", torch.float32)
    return state


def _dequantized_weight(module: nn.Module) -> torch.Tensor:
    """The weight a layer computes with, in float. peft's helper would store the 8-bit scales in the
    layer's matmul state, after which the layer no longer runs: int8 weights are de-quantized here."""
    weight = module.weight
    if type(weight).__name__ == "Int8Params":
        import bitsandbytes

        scales = weight.SCB if weight.SCB is not None else module.state.SCB  # moved to the state by a forward
        return bitsandbytes.functional.int8_vectorwise_dequant(weight.data, scales)
    return dequantize_module_weight(module)


def _unwrapped(module: nn.Module) -> nn.Module:
    """The original layer inside peft's wrappers (LoRA layers, modules_to_save)."""
    while True:
        if "base_layer" in module._modules:
            module = module.base_layer
        elif "original_module" in module._modules:
            module = module.original_module
        else:
            return module


# 4. Probes and error ------------------------------------------------------------------------------
def probe_inputs(tokenizer) -> list[torch.Tensor]:
    """(1, seq) prompt ids, rendered by the same chat-template code as training and generation."""
    return [torch.tensor([prompt_ids_for_generation(tokenizer, conversation)]) for conversation in PROBE_CONVERSATIONS]


@torch.no_grad()
def probe_logits(model, probes: list[torch.Tensor]) -> torch.Tensor:
    """All probes' logits, flattened, in float32 on the CPU; dropout off while measuring."""
    was_training, device = model.training, next(model.parameters()).device
    model.eval()
    try:
        logits = [model(input_ids=ids.to(device)).logits.float().cpu().flatten() for ids in probes]
    finally:
        model.train(was_training)
    return torch.cat(logits)


def relative_error(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    """max|candidate - reference| / max|reference|."""
    scale = reference.abs().max().clamp(min=torch.finfo(torch.float32).tiny)
    return float((candidate - reference).abs().max() / scale)


# 5. Saving ----------------------------------------------------------------------------------------
def save_merged(model, tokenizer, folder: Path) -> dict:
    """Merge, save a plain HF folder, reload it the plain way and measure its logits' error."""
    probes = probe_inputs(tokenizer)
    extra = {}
    if is_quantized(model):
        # The merge is checked against the de-quantized adapter model (what merging can get wrong); how far
        # the quantized model itself is from it (8-bit rounds each product's inputs too) is reported beside.
        quantized_logits = probe_logits(model, probes)
        adapter_copy = dequantized_adapter_copy(model)
        extra["quantized_model_relative_error"] = relative_error(probe_logits(adapter_copy, probes), quantized_logits)
    else:
        adapter_copy = float32_cpu_copy(model)
    reference = probe_logits(adapter_copy, probes)
    merged = merge_float32(adapter_copy)
    del adapter_copy  # the peft wrapper would keep the merged weights alive during the reload
    merged.save_pretrained(folder)  # transformers 5 always writes safetensors
    tokenizer.save_pretrained(folder)
    del merged
    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return {"merged": True, "relative_error": relative_error(reference, probe_logits(reloaded, probes)), **extra}


def save_unmerged_adapter(model, tokenizer, folder: Path, reason: str) -> dict:
    model.save_pretrained(folder / "adapter")
    tokenizer.save_pretrained(folder / "adapter")
    return {"merged": False, "reason": reason, "relative_error": None}


# 6. The whole export ------------------------------------------------------------------------------
def export_model(model, tokenizer, output_dir: str | Path, head=None, max_relative_error: float = 1e-3,
                 weights: str = "current", checkpoints_dir: str | Path | None = None) -> dict:
    """Merge (or save the adapter), check, write ``merge_report.json``, move into place; returns the
    report. A full disk or an unwritable path removes the partial folder and raises one line that
    names the last checkpoint in ``checkpoints_dir`` (``core/disk_errors.py``)."""
    output_dir = Path(output_dir)
    staging = output_dir.with_name(output_dir.name + ".partial")
    with removed_on_write_fault(staging, "the merged model", output_dir, merged_bytes(model),
                                lambda: intact_and_rerun(checkpoints_dir)):
        report = _write_export(model, tokenizer, _emptied(staging), head, max_relative_error, weights)
        final = output_dir if report["passed"] is not False else output_dir.with_name(output_dir.name + ".failed")
        report.update(_paths(staging, final, report["merged"]))
        (staging / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        _replace_folder(staging, final)  # last: a folder without its report is never in place
    _announce_or_raise(report)
    return report


def _write_export(model, tokenizer, staging: Path, head, max_relative_error: float, weights: str) -> dict:
    """Everything of the export into ``staging``; the report without its paths."""
    report = {**describe_method(model), "weights": weights, "max_relative_error": max_relative_error}
    reason = unmergeable_reason(model)
    report.update(save_unmerged_adapter(model, tokenizer, staging, reason) if reason
                  else save_merged(model, tokenizer, staging))
    if getattr(head, "classifier", None) is not None:
        save_choice_head(head, staging)
    error = report["relative_error"]
    report["passed"] = None if error is None else error <= max_relative_error
    return report


def merged_bytes(model) -> int:
    """About the merged folder's size: every weight in float32, as ``save_merged`` writes it (a
    4-bit base counts its packed bytes here, so it needs up to 8 times this)."""
    return 4 * sum(parameter.numel() for parameter in model.parameters())


def intact_and_rerun(checkpoints_dir) -> tuple[str, str]:
    """A fit resumed from its final checkpoint stops before the merge (nothing left to train), and no
    command merges a checkpoint on its own yet: the way to the merged folder is the fit again."""
    intact, _ = checkpoints_intact(checkpoints_dir)
    return intact, "re-run the same sft fit (no command redoes only the merge yet)"


def _paths(staging: Path, final: Path, merged: bool) -> dict:
    has_choice_head = (staging / CHOICE_HEAD_WEIGHTS).is_file()
    return {"output_dir": str(final), "model_dir": str(final) if merged else None,
            "adapter_dir": None if merged else str(final / "adapter"),
            "choice_head": str(final / CHOICE_HEAD_WEIGHTS) if has_choice_head else None}


def _announce_or_raise(report: dict) -> None:
    if report["passed"] is False:
        raise MergeVerificationError(
            f"the merged {report['method']} model's logits differ from the adapter model's by a relative "
            f"{report['relative_error']:.3g} (allowed: {report['max_relative_error']:g}); the folder was kept as "
            f"{report['output_dir']} for inspection. A quantized or bf16-computed adapter model differs by its "
            "rounding: raise max_relative_error if that is the cause, else the merge is wrong."
        )
    if report["merged"]:
        print(f"merged model ({report['method']}, relative error {report['relative_error']:.2e}): {report['output_dir']}")
    else:
        print(f"adapter not merged ({report['reason']}); saved with save_pretrained: {report['adapter_dir']}")


def _emptied(folder: Path) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def _replace_folder(source: Path, target: Path) -> None:
    """Move ``source`` to ``target``, replacing an earlier export there but nothing else."""
    if target.exists():
        if not (target / REPORT_FILE).is_file():
            raise FileExistsError(f"{target} exists and is no earlier merge (no {REPORT_FILE}); "
                                  f"choose a new output_dir. The export is left in {source}.")
        shutil.rmtree(target)
    os.replace(source, target)
