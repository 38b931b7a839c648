"""Where a model name points, for the tokenizer: the data module and the model module both need it.

One function loads the tokenizer, so the data module (tokens) and the model module (weights) can
never disagree about what a name means.
"""

from pathlib import Path

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


# ChatML, as SmolLM2 and Qwen write it: each turn is ``<|im_start|>role\ncontent<|im_end|>\n``.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False, chat_template: str | None = None):
    """The tokenizer with its chat template; a missing pad token falls back to the EOS token.
    ``trust_remote_code`` runs a tokenizer class shipped as Python with the model: off unless asked.
    ``chat_template`` (``chatml`` or a Jinja file) replaces the tokenizer's own, for base models that
    have none. Tokens it adds are listed in ``tokenizer.added_template_token_ids``: the model's
    embeddings must grow to hold them, and they must be trained (``modules/sft_module.py``)."""
    resolved = resolve_model_path(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved, trust_remote_code=trust_remote_code)
    except OSError as error:
        raise explain_load_error(name_or_path, "tokenizer", error) from error
    tokenizer.added_template_token_ids = apply_chat_template_option(tokenizer, chat_template)
    if tokenizer.chat_template is None:
        raise ModelLoadError(
            f"the tokenizer of '{name_or_path}' has no chat template (a base model?): set model.chat_template "
            "to chatml (adds <|im_start|>/<|im_end|> and trains them) or to the path of a Jinja template file, "
            "or use a chat/instruct model"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def apply_chat_template_option(tokenizer, chat_template: str | None) -> list[int]:
    """Sets ``chat_template`` (``chatml`` or a Jinja file's path) on ``tokenizer``; returns the ids
    of the tokens it had to add (ChatML's two, where the vocabulary lacks them).

    >>> apply_chat_template_option(base_tokenizer, "chatml")   # bytes 0-255, <|endoftext|> 256
    [257, 258]
    """
    if chat_template is None:
        return []
    if chat_template != "chatml":
        tokenizer.chat_template = read_template_file(chat_template)
        return []
    missing = [token for token in CHATML_TOKENS if token not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
    tokenizer.chat_template = CHATML_TEMPLATE
    # An answer ends with <|im_end|>: generation stops at the EOS token, so that is what it must be.
    tokenizer.eos_token = "<|im_end|>"
    return tokenizer.convert_tokens_to_ids(missing)


def read_template_file(path: str) -> str:
    file = Path(path)
    if not file.is_file():
        raise ModelLoadError(
            f"model.chat_template: '{path}' is neither chatml nor a Jinja template file that exists; "
            "give chatml or the path of a file holding the template"
        )
    return file.read_text(encoding="utf-8")
