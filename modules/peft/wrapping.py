"""Wrapping a causal LM with any PEFT method given as a ``peft.PeftConfig`` in YAML.

No code per method: the config's class picks it. Two defaults are added (causal-LM task, all
linear layers targeted), and AdaLoRA gets a config class whose schedule follows the run
(``AdaLoraConfig`` below); what AdaLoRA needs from the training loop is its own callback,
``modules/peft/adalora_budget.py``, which the LightningModule adds when the method is AdaLoRA.
"""

import copy
from dataclasses import dataclass, field

import peft
from peft import IA3Config, LoHaConfig, LoKrConfig, LoraConfig, PeftConfig, get_peft_model


# Methods whose ``target_modules`` accept peft's "all-linear" (AdaLoRA is a LoraConfig). IA3's
# ``feedforward_modules`` (the layers scaled at their input) then comes from peft's table per
# architecture (down_proj for Llama/Qwen2), a subset of all linear layers as peft requires.
ALL_LINEAR_BY_DEFAULT = (LoraConfig, IA3Config, LoHaConfig, LoKrConfig)


@dataclass
class AdaLoraConfig(peft.AdaLoraConfig):
    """peft's AdaLoraConfig, with its schedule measured in the run's own steps: ``total_step`` may be
    left out (then it is the trainer's number of optimizer steps, set when fit starts), and
    ``tinit``/``tfinal`` below 1 are fractions of it, as ``model.warmup`` is (peft's own class
    refuses a missing total_step and takes step counts only)."""

    tinit: float = field(default=0, metadata={"help": "Steps (or below 1: share of all steps) before pruning."})
    tfinal: float = field(default=0, metadata={"help": "Steps (or below 1: share of all steps) at the final ranks."})

    def __post_init__(self):
        if self.total_step is not None:
            super().__post_init__()
            return
        self.total_step = self.tinit + self.tfinal + 1  # a stand-in so peft checks every other field
        super().__post_init__()
        self.total_step = None


def prepare_peft_config(peft_config: PeftConfig) -> PeftConfig:
    """A copy with the defaults this project promises: causal-LM task, all linear layers targeted."""
    config = copy.deepcopy(peft_config)
    if getattr(config, "task_type", None) is None:
        config.task_type = "CAUSAL_LM"
    if isinstance(config, ALL_LINEAR_BY_DEFAULT) and config.target_modules is None:
        config.target_modules = "all-linear"
    return config


POSITIVE_COUNTS = ("r", "init_r", "target_r", "num_virtual_tokens")  # ranks and prompt lengths


def check_peft_settings(peft_config: PeftConfig | None) -> None:
    """A rank or prompt length below 1 is refused when the config is read: peft itself only refuses it
    once the model is loaded and the run folder made.

    >>> check_peft_settings(LoraConfig(r=-4))
    Traceback (most recent call last):
    ValueError: model.peft_config.init_args.r must be a whole number of at least 1, got -4
    """
    for name in POSITIVE_COUNTS:
        value = getattr(peft_config, name, None)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"model.peft_config.init_args.{name} must be a whole number of at least 1, got {value}")


def apply_peft(model, peft_config: PeftConfig | None, new_token_ids: list[int] = ()):
    """No config means full fine-tuning: the model is returned with every weight trainable.
    ``new_token_ids`` (tokens added for the chat template, with untrained embeddings) are trained
    under the adapter too."""
    if peft_config is None:
        return model
    return get_peft_model(model, train_new_tokens(prepare_peft_config(peft_config), model, new_token_ids))


def train_new_tokens(config: PeftConfig, model, token_ids: list[int]) -> PeftConfig:
    """``config`` with the rows of ``token_ids`` trained in the input embeddings and the output layer.

    peft's ``trainable_token_indices`` trains (and saves) only those rows, where ``modules_to_save``
    would train and save both whole matrices; merging writes the rows into the plain weights. A tied
    output layer follows the embeddings (peft ties the two wrappers when their indices agree).
    """
    if not token_ids:
        return config
    if not hasattr(config, "trainable_token_indices"):
        raise ValueError(
            f"model.chat_template added tokens {list(token_ids)} whose embeddings must be trained, which "
            f"{type(config).__name__} cannot do: use a peft.LoraConfig, full fine-tuning (no peft_config), or a "
            "model whose vocabulary already has the template's tokens"
        )
    layers = [layer_name(model, model.get_input_embeddings())]
    if model.get_output_embeddings() is not None:
        layers.append(layer_name(model, model.get_output_embeddings()))
    wanted = dict(config.trainable_token_indices) if isinstance(config.trainable_token_indices, dict) else \
        {layers[0]: list(config.trainable_token_indices or [])}
    for layer in layers:
        wanted[layer] = sorted(set(wanted.get(layer, [])) | set(token_ids))
    config.trainable_token_indices = wanted
    return config


def layer_name(model, layer) -> str:
    """The last part of ``layer``'s name in ``model`` (``embed_tokens``, ``lm_head``): what peft matches."""
    return next(name for name, module in model.named_modules() if module is layer).rsplit(".", 1)[-1]


def parameter_count(parameter) -> int:
    """Weights a parameter stands for: bitsandbytes packs 4-bit weights two (or more) per element."""
    if type(parameter).__name__ == "Params4bit":
        storage = getattr(parameter, "quant_storage", None)
        return parameter.numel() * 2 * (storage.itemsize if storage is not None else 1)
    return parameter.numel()


def trainable_parameter_counts(module) -> tuple[int, int]:
    """(trainable, total) parameter counts, each shared tensor once."""
    parameters = list(module.parameters())
    trainable = sum(parameter_count(p) for p in parameters if p.requires_grad)
    return trainable, sum(parameter_count(p) for p in parameters)
