"""Output heads: how the backbone's outputs become a loss and an answer.

A head is a swappable part of the model (chosen in YAML with ``class_path``), so a new one (a
choice classifier, a router between several) is a new class here, not a branch in the training
step. Every head answers three questions: the training loss, the evaluation loss (with the count
it is a mean over), and the answers for a batch of prompts.
"""

from dataclasses import dataclass

import torch
from torch import nn

from datamodules.accumulation import trained_tokens_in
from modules.generation import GenerationSettings, generate_answers


@dataclass
class EvalLoss:
    """A mean loss and how many items (tokens, records) it is a mean over."""

    value: torch.Tensor
    count: int


class Head(nn.Module):
    """Interface of a head; see ``LMHead`` for the causal-LM one."""

    def training_loss(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def evaluation_loss(self, model: nn.Module, batch: dict) -> EvalLoss:
        raise NotImplementedError

    def predict(self, model: nn.Module, tokenizer, batch: dict, settings: GenerationSettings) -> list[str]:
        raise NotImplementedError


class LMHead(Head):
    """The causal language-model head: next-token cross-entropy on the trained (answer) tokens."""

    def training_loss(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        """Summed token losses over the trained tokens of the whole optimizer step.

        ``num_items_in_batch`` makes transformers divide the summed loss by the step's trained-token
        count instead of this micro-batch's, so accumulated micro-batches add up to the true mean.
        """
        outputs = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
            num_items_in_batch=batch["step_trained_tokens"],
        )
        return {"loss": outputs.loss}

    def evaluation_loss(self, model: nn.Module, batch: dict) -> EvalLoss:
        outputs = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        )
        return EvalLoss(outputs.loss, trained_tokens_in(batch))

    def predict(self, model: nn.Module, tokenizer, batch: dict, settings: GenerationSettings) -> list[str]:
        return generate_answers(model, tokenizer, batch["input_ids"], batch["attention_mask"], settings)
