"""Which weights a checkpoint holds, and a check that it fits the model it is loaded into.

PEFT checkpoints keep only trainable weights and load with ``strict=False``. Non-strict loading
would silently ignore weights from a run with another PEFT config or model, so the keys are
checked here instead: every checkpoint weight must exist in the model, and every trainable weight
of the model must come from the checkpoint.
"""


def trainable_names(module) -> set[str]:
    return {name for name, parameter in module.named_parameters() if parameter.requires_grad}


def trainable_state(module, state_dict: dict) -> dict:
    """The entries of ``state_dict`` that are trainable parameters of ``module``."""
    keep = trainable_names(module)
    return {name: tensor for name, tensor in state_dict.items() if name in keep}


def _examples(names: set[str]) -> str:
    return ", ".join(sorted(names)[:3]) + (" ..." if len(names) > 3 else "")


def check_checkpoint_keys(module, checkpoint_state: dict) -> None:
    model_keys = set(module.state_dict())
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
