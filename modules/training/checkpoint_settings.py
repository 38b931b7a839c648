"""The model settings a checkpoint was trained with: written into every checkpoint, and compared with
the configured ones before a model loads from it.

A LoRA r=16 checkpoint loaded with ``--model.peft_config.init_args.r 8`` builds r=8 adapters, and
loading the weights then fails with one size-mismatch line per adapter matrix (hundreds) and a
traceback. Compared first, the run stops with one line naming each setting that differs.

Only what decides which trained weights exist and what they mean is compared: the base model, the
PEFT method and its shape settings (rank, alpha, target modules ...) and the head. Everything else
(generation, schedule, dropout, dtype) stays the user's to change between fit and predict.
Checkpoints written before the settings were saved carry none and are not compared.
"""

from enum import Enum

CHECKPOINT_KEY = "model_settings"

# The PeftConfig fields that decide the adapter weights' names, shapes or scale (those a method has).
PEFT_FIELDS = ("r", "lora_alpha", "target_modules", "exclude_modules", "layers_to_transform", "use_rslora",
               "use_dora", "modules_to_save", "init_r", "target_r", "num_virtual_tokens", "encoder_hidden_size",
               "feedforward_modules")
METHOD = "peft_config"


def model_settings(module) -> dict:
    """The settings of an ``SFTModule`` (built or not) in plain values a weights-only load reads.

    >>> from peft import LoraConfig
    >>> from types import SimpleNamespace
    >>> from modules.heads import LMHead
    >>> settings = model_settings(SimpleNamespace(model_name_or_path="m", head=LMHead(),
    ...                                           peft_config=LoraConfig(r=16, target_modules=["v_proj", "q_proj"])))
    >>> settings["peft_config"], settings["r"], settings["target_modules"], settings["head"]
    ('LoraConfig', 16, ['q_proj', 'v_proj'], 'LMHead')
    """
    peft_config = module.peft_config
    settings = {"model_name_or_path": str(module.model_name_or_path), "head": type(module.head).__name__,
                METHOD: type(peft_config).__name__ if peft_config is not None else None}
    for field in PEFT_FIELDS:
        if peft_config is not None and hasattr(peft_config, field):
            settings[field] = _plain(getattr(peft_config, field))
    return settings


def _plain(value):
    """Sets as sorted lists (peft keeps target_modules as a set), enums as their value."""
    if isinstance(value, (set, frozenset)):
        return sorted(_plain(item) for item in value)
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, Enum):
        return value.value
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


def settings_difference(checkpoint_path, saved: dict, configured: dict) -> str | None:
    """One line naming each setting that differs, or None when the checkpoint fits the config.

    >>> saved = {"model_name_or_path": "m", "head": "LMHead", "peft_config": "LoraConfig", "r": 16, "lora_alpha": 8}
    >>> print(settings_difference("last.ckpt", saved, {**saved, "r": 8}))
    last.ckpt was trained with model.peft_config r=16; this config has r=8: use the checkpoint's settings (drop the overrides) or start a new fit
    >>> print(settings_difference("last.ckpt", saved, {**saved, "peft_config": None}))
    last.ckpt was trained with model.peft_config LoraConfig; this config has full fine-tuning (no model.peft_config): use the checkpoint's settings (drop the overrides) or start a new fit
    """
    differing = [key for key in saved if key not in PEFT_FIELDS and saved[key] != configured.get(key)]
    if not differing and saved.get(METHOD) is not None:  # the same method: its shape settings
        differing = [key for key in PEFT_FIELDS if key in saved and saved[key] != configured.get(key)]
    if not differing:
        return None
    then = ", ".join(_describe(key, saved[key], first=index == 0) for index, key in enumerate(differing))
    now = ", ".join(_describe(key, configured.get(key), first=False) for key in differing)
    return (f"{checkpoint_path} was trained with {then}; this config has {now}: use the checkpoint's settings "
            "(drop the overrides) or start a new fit")


def _describe(key: str, value, first: bool) -> str:
    if key == METHOD:
        return f"model.{METHOD} {value}" if value is not None else f"full fine-tuning (no model.{METHOD})"
    if key in ("head", "model_name_or_path"):
        return f"model.{key} {value}"
    return f"model.{METHOD} {key}={_shown(value)}" if first else f"{key}={_shown(value)}"


def _shown(value) -> str:
    return "[" + ", ".join(map(str, value)) + "]" if isinstance(value, list) else str(value)


def refuse_other_settings(checkpoint_path, checkpoint: dict, module) -> None:
    """A ValueError naming what differs when ``module``'s settings are not the checkpoint's."""
    saved = checkpoint.get(CHECKPOINT_KEY)
    if saved is not None and (difference := settings_difference(checkpoint_path, saved, model_settings(module))):
        raise ValueError(difference)
