"""Option letters: their token ids, masks for missing options, and letter scoring.

Letter scoring answers a choice question with no extra parameters: the LM head's logits of the
tokens "A", "B", … at the answer position, options the record lacks masked out. It is the
baseline a trained choice head has to beat.
"""

import string

import torch

LETTERS = string.ascii_uppercase


def letter_token_ids(tokenizer, count: int) -> list[int]:
    """The single token each of the first ``count`` letters is at the start of an answer."""
    ids = []
    for letter in LETTERS[:count]:
        encoded = tokenizer.encode(letter, add_special_tokens=False)
        if len(encoded) != 1:
            raise ValueError(f"the tokenizer splits option letter '{letter}' into {len(encoded)} tokens")
        ids.append(encoded[0])
    return ids


def mask_missing_options(option_logits: torch.Tensor, num_choices: torch.Tensor) -> torch.Tensor:
    """(batch, max_choices) logits with options beyond each row's count set to -inf."""
    option_index = torch.arange(option_logits.shape[1], device=option_logits.device)
    missing = option_index[None, :] >= num_choices.to(option_logits.device)[:, None]
    return option_logits.masked_fill(missing, float("-inf"))


def accuracy(option_logits: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    return (option_logits.argmax(dim=-1) == gold.to(option_logits.device)).float().mean()


def to_letters(option_logits: torch.Tensor) -> list[str]:
    return [LETTERS[i] for i in option_logits.argmax(dim=-1).tolist()]
