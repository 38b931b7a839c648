"""Which weights a checkpoint holds, and a check that it fits the model it is loaded into.

PEFT checkpoints keep only trainable weights and load with ``strict=False``. Non-strict loading
would silently ignore weights from a run with another PEFT config or model, so the keys are
checked here instead: every checkpoint weight must exist in the model, and every trainable weight
of the model must come from the checkpoint. Names are compared without FSDP's wrapper modules
(``modules/training/sharding.py``), as the full state dict FSDP gathers names them.
"""

from modules.training.sharding import clean_name


def trainable_names(module) -> set[str]:
    return {clean_name(name) for name, parameter in module.named_parameters() if parameter.requires_grad}


def model_names(module) -> set[str]:
    """Every weight and buffer name of ``module`` (not ``state_dict()``: under FSDP that is a collective
    that gathers the whole model); tied weights under each of their names, as a state dict has them."""
    named = [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]
    return {clean_name(name) for name, _ in named}


def trainable_state(module, state_dict: dict) -> dict:
    """The entries of ``state_dict`` that are trainable parameters of ``module``."""
    keep = trainable_names(module)
    return {name: tensor for name, tensor in state_dict.items() if name in keep}


def _examples(names: set[str]) -> str:
    return ", ".join(sorted(names)[:3]) + (" ..." if len(names) > 3 else "")


def check_checkpoint_keys(module, checkpoint_state: dict) -> None:
    model_keys = model_names(module)
    unexpected = set(checkpoint_state) - model_keys
    if unexpected:
        raise ValueError(
            f"the checkpoint holds {len(unexpected)} weights this model does not have ({_examples(unexpected)}): "
            "was it trained with another model_name_or_path or peft_config? Use the config it was trained with."
        )
    missing = trainable_names(module) - set(checkpoint_state)
    if missing:
        raise ValueError(
            f"the checkpoint lacks {len(missing)} trainable weights of this model ({_examples(missing)}): "
            "was it trained with another peft_config? Use the config it was trained with."
        )
