"""Where a model name points, for the tokenizer: the data module and the model module both need it.

One function loads the tokenizer, so the data module (tokens) and the model module (weights) can
never disagree about what a name means.
"""

from transformers import AutoTokenizer

from core.embedded import resolve_model_path


class ModelLoadError(RuntimeError):
    """A model or tokenizer could not be loaded; says what was tried and what to do."""


def explain_load_error(name_or_path: str, what: str, error: Exception) -> ModelLoadError:
    return ModelLoadError(
        f"could not load the {what} '{name_or_path}': {error}\n"
        "It is neither an embedded alias (e.g. smollm2-135m-instruct) nor a loadable local folder, and "
        "fetching it from the model hub failed. Without network access, download the model elsewhere and "
        "pass its local folder as --model.model_name_or_path."
    )


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    """The tokenizer with its chat template; a missing pad token falls back to the EOS token.
    ``trust_remote_code`` runs a tokenizer class shipped as Python with the model: off unless asked."""
    resolved = resolve_model_path(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved, trust_remote_code=trust_remote_code)
    except OSError as error:
        raise explain_load_error(name_or_path, "tokenizer", error) from error
    if tokenizer.chat_template is None:
        raise ModelLoadError(f"the tokenizer of '{name_or_path}' has no chat template; use a chat/instruct model")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
