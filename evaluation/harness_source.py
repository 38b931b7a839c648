"""What ``sft eval`` scores: a run, a merged or adapter folder, or a model name, and where its results go.

A run's folder (``runs/<name>/fit``) is scored as it is served with adapters: its ``adapter/`` on the
base named in ``adapter_config.json`` (item 1 of issue 23), else its ``merged/`` folder. The adapter
is merged into the float32 base in memory (the same logits to 1e-5, as ``tests/modules/export``
checks), which lm-eval then runs at a plain model's speed. Results go to ``<run>/eval`` for a run or a
folder inside one; any other model needs ``--out``, asked for before the model is loaded.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoTokenizer

from core.embedded import resolve_model_path
from core.tokenizer import explain_load_error
from modules.backbone.loading import load_causal_lm

ADAPTER_CONFIG, MODEL_CONFIG = "adapter_config.json", "config.json"
RESULTS_FOLDER = "eval"


@dataclass(frozen=True)
class EvalSource:
    """``kind`` is ``adapter`` or ``model``; ``path`` a folder or a model name; ``run`` the run folder, if any."""

    kind: str
    path: str
    run: Path | None


def find_source(given: str) -> EvalSource:
    """Read what ``given`` names without loading anything (so a bad path fails in a second)."""
    folder = Path(given)
    if (folder / "adapter" / ADAPTER_CONFIG).is_file():
        return EvalSource("adapter", str(folder / "adapter"), folder)
    if (folder / "merged" / MODEL_CONFIG).is_file():
        return EvalSource("model", str(folder / "merged"), folder)
    run = folder.parent if (folder.parent / "checkpoints").is_dir() else None
    if (folder / ADAPTER_CONFIG).is_file():
        return EvalSource("adapter", given, run)
    if (folder / MODEL_CONFIG).is_file():
        return EvalSource("model", given, run)
    if folder.exists():
        raise FileNotFoundError(f"{given} holds no model: give a run folder (runs/NAME/fit, with adapter/ or merged/), "
                                "a merged or adapter folder, or a model name")
    return EvalSource("model", given, None)  # a model name: an embedded alias or the hub's


def results_folder(source: EvalSource, out: str | None) -> Path:
    if out is not None:
        return Path(out)
    if source.run is None:
        raise ValueError(f"--out is needed: {source.path} is not inside a run folder, so say where the results go")
    return source.run / RESULTS_FOLDER


def load_source(source: EvalSource, dtype: str = "float32", device: str = "cpu"):
    """The model (eval mode, on ``device``) and its tokenizer: an adapter merged into its base."""
    if source.kind == "adapter":
        model = merged_adapter(source.path, dtype)
    else:
        model = load_causal_lm(source.path, dtype)
    resolved = resolve_model_path(source.path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved)  # an adapter folder holds its training tokenizer
    except OSError as error:
        raise explain_load_error(source.path, "tokenizer", error) from error
    return model.to(device).eval(), tokenizer


def merged_adapter(folder: str, dtype: str):
    """The base named in the adapter's config, with the adapter merged in (prompt-learning ones have no weights to merge)."""
    from peft import PeftModel

    config = json.loads((Path(folder) / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    if config.get("peft_type") in ("PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING", "MULTITASK_PROMPT_TUNING"):
        raise ValueError(f"{folder} is a {config['peft_type']} adapter: its virtual tokens change the sequence lm-eval "
                         "scores, so sft eval takes LoRA-family adapters and merged folders only")
    base = load_causal_lm(config["base_model_name_or_path"], dtype)
    return PeftModel.from_pretrained(base, folder).merge_and_unload()
