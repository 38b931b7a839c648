"""Saving the choice classifier beside a merged model, and loading it back for ``sft predict``.

The classifier is no part of the causal LM, so ``save_pretrained`` does not hold it: it is written
as ``choice_head.safetensors`` (float32 weights) + ``choice_head.json`` (its shapes).
"""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

CHOICE_HEAD_WEIGHTS = "choice_head.safetensors"
CHOICE_HEAD_INFO = "choice_head.json"


def save_choice_head(head, folder: Path) -> None:
    """The classifier's float32 weights plus the shapes a predict path needs to rebuild it."""
    classifier = head.classifier
    weights = {name: tensor.detach().to("cpu", torch.float32).contiguous()
               for name, tensor in classifier.state_dict().items()}
    save_file(weights, folder / CHOICE_HEAD_WEIGHTS)
    info = {"hidden_size": classifier.in_features, "max_choices": classifier.out_features,
            "head": type(head).__name__}
    (folder / CHOICE_HEAD_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def load_choice_head(folder: str | Path) -> nn.Linear | None:
    """The choice classifier saved in a merged folder, or None if the run had no choice head."""
    folder = Path(folder)
    info_path = folder / CHOICE_HEAD_INFO
    if not info_path.is_file():
        return None
    info = json.loads(info_path.read_text(encoding="utf-8"))
    classifier = nn.Linear(info["hidden_size"], info["max_choices"])
    try:
        classifier.load_state_dict(load_file(folder / CHOICE_HEAD_WEIGHTS))
    except (RuntimeError, FileNotFoundError) as error:
        raise ValueError(f"{folder / CHOICE_HEAD_WEIGHTS} does not match {info_path} ({info}): {error}") from error
    return classifier


def restore_choice_head(head, model_folder: str) -> bool:
    """Load a merged folder's saved classifier into ``head`` (``sft predict`` from a merged model).

    Returns whether one was loaded; a hub name or a folder without a saved head loads nothing.
    """
    if getattr(head, "classifier", None) is None or not Path(model_folder).is_dir():
        return False
    saved = load_choice_head(model_folder)
    if saved is None:
        return False
    if saved.weight.shape != head.classifier.weight.shape:
        raise ValueError(
            f"the choice head saved in {model_folder} has shape {tuple(saved.weight.shape)} but this head expects "
            f"{tuple(head.classifier.weight.shape)} (hidden size, max_choices): set max_choices to match"
        )
    head.classifier.load_state_dict(saved.state_dict())
    return True
