"""A PEFT run's adapter folder: what ``PeftModel.from_pretrained``, vLLM's and TGI's multi-LoRA serving
and the hub load.

The merged folder serves one model; the adapter folder (PEFT's ``save_pretrained``: its config and
weights, ~10 MB for LoRA r16 on a 135M model against 540 MB merged) serves many beside one base. It
holds the tokenizer with its chat template too, and a model card saying which base it needs and how
to load it. ``base_model_name_or_path`` is the name the user gave: a hub name or a folder as it was;
the embedded alias stays the alias, since its weights are the dequantized Q4_1 GGUF and not the hub's
float weights (an adapter put on the hub's weights would meet a different base), and the card says
how to get that base on another machine. Written into ``<folder>.partial`` and moved into place, so a
failure never leaves half a folder where a server would look.
"""

import json
import os
import shutil
from pathlib import Path

from peft import PeftModel

from core.disk_errors import removed_on_write_fault
from core.embedded import lookup
from modules.export.hf_folder import intact_and_rerun
from modules.peft.methods import learns_virtual_tokens

CARD_FILE = "README.md"


def save_adapter_folder(model: PeftModel, tokenizer, folder: Path, base_name: str, trained_on: str,
                        command: str, checkpoints_dir: str | Path | None = None) -> Path:
    """Write the adapter, tokenizer and card into ``folder`` (replacing an earlier one); returns it. A full
    disk or an unwritable path raises one line naming the intact checkpoints, as the merged export does."""
    folder = Path(folder)
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    trainable_bytes = 4 * sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
    with removed_on_write_fault(staging, "the adapter folder", folder, trainable_bytes,
                                lambda: intact_and_rerun(checkpoints_dir)):
        _write_into_place(model, tokenizer, staging, folder, base_name, trained_on, command)
    return folder


def _write_into_place(model: PeftModel, tokenizer, staging: Path, folder: Path, base_name: str, trained_on: str,
                      command: str) -> None:
    try:
        _save_with_base_name(model, staging, base_name)
        tokenizer.save_pretrained(staging)
        (staging / CARD_FILE).write_text(model_card(model, base_name, trained_on, command), encoding="utf-8")
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _save_with_base_name(model: PeftModel, folder: Path, base_name: str) -> None:
    """``save_pretrained``, then the config's base renamed to ``base_name``. Saved under the loaded base's
    own name first (a local folder): PEFT reads that base's config to see whether the vocabulary changed,
    and under a hub name or an alias it would try the network for it."""
    model.save_pretrained(folder)
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config_path.write_text(json.dumps({**config, "base_model_name_or_path": base_name}, indent=2, sort_keys=True) + "\n",
                           encoding="utf-8")


def model_card(model: PeftModel, base_name: str, trained_on: str, command: str) -> str:
    """A short Markdown card: the base and how to get it, the method's settings, the data and the command."""
    config = model.active_peft_config
    method = getattr(config.peft_type, "value", str(config.peft_type))
    settings = ", ".join(f"{name} {getattr(config, name)}" for name in ("r", "lora_alpha", "lora_dropout",
                                                                           "num_virtual_tokens")
                         if getattr(config, name, None) is not None)
    return (f"# {method} adapter for {base_name}\n\n"
            f"- base model: `{base_name}`{_how_to_get(base_name)}\n"
            f"- method: {method}{f' ({settings})' if settings else ''}, modules: {_targets(config)}\n"
            f"- trained on: {trained_on}\n"
            f"- command: `{command}`\n\n"
            "## Load it\n\n```python\n"
            "from peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f"base = AutoModelForCausalLM.from_pretrained({_base_expression(base_name)})\n"
            "model = PeftModel.from_pretrained(base, \"path/to/this/folder\")\n"
            "tokenizer = AutoTokenizer.from_pretrained(\"path/to/this/folder\")  # with the chat template it trained with\n"
            "```\n")


def _how_to_get(base_name: str) -> str:
    if lookup(base_name) is None:
        return ""
    return (f" (lightning-sft's embedded model: `sft fetch-model {base_name}` downloads and converts it, and "
            "prints its folder; the hub's float weights are a different base)")


def _base_expression(base_name: str) -> str:
    if lookup(base_name) is None:
        return repr(base_name)
    return f"\"<the folder `sft fetch-model {base_name}` prints>\""


def _targets(config) -> str:
    targets = getattr(config, "target_modules", None)
    if not targets:
        return "virtual tokens" if learns_virtual_tokens(config) else "peft's default"
    if isinstance(targets, str):
        return targets
    return ", ".join(sorted({name.split(".")[-1] for name in targets}))  # PEFT may list every layer's module
