"""The causal language-model head: next-token cross-entropy on the trained (answer) tokens."""

import torch

from datamodules.accumulation import trained_tokens_in
from modules.generation import GenerationPlan, generate_for_rows
from modules.heads import letters
from modules.heads.base import EvalValue, Head, at_answer_positions, forward, prompt_forward


class LMHead(Head):
    def __init__(self, choices_by_letter_scores: bool = False, max_choices: int = 5):
        """
        Args:
            choices_by_letter_scores: Answer choice records by the LM logits of the option letters
                instead of generating text.
            max_choices: Most options a choice record may have (A, B, ... up to this many).
        """
        super().__init__()
        self.choices_by_letter_scores = choices_by_letter_scores
        self.max_choices = max_choices
        self.letter_ids: list[int] = []

    def setup(self, model, tokenizer) -> None:
        self.letter_ids = letters.letter_token_ids(tokenizer, self.max_choices)

    def training_loss(self, model, batch: dict) -> dict[str, torch.Tensor]:
        """Summed token losses over the trained tokens of the whole optimizer step.

        ``num_items_in_batch`` makes transformers divide the summed loss by the step's trained-token
        count instead of this micro-batch's, so accumulated micro-batches add up to the true mean.
        """
        outputs = forward(model, batch, batch["labels"], divisor=batch["step_trained_tokens"])
        return {"loss": outputs.loss}

    def evaluation(self, model, batch: dict) -> dict[str, EvalValue]:
        outputs = forward(model, batch, batch["labels"])
        values = {"loss": EvalValue(outputs.loss, trained_tokens_in(batch))}
        values.update(letter_scoring(self.letter_ids, outputs.logits, batch))
        return values

    def predict(self, model, tokenizer, batch: dict, plan: GenerationPlan) -> list:
        choice_rows = batch["is_choice"].tolist() if self.choices_by_letter_scores else [False] * len(batch["ids"])
        generated_rows = [row for row, is_choice in enumerate(choice_rows) if not is_choice]
        answers = dict(zip(generated_rows, generate_for_rows(model, tokenizer, batch, plan, generated_rows)))
        if any(choice_rows):
            answers.update(self._letter_answers(model, batch, choice_rows))
        return [answers[row] for row in range(len(choice_rows))]

    @torch.no_grad()
    def _letter_answers(self, model, batch: dict, choice_rows: list[bool]) -> dict[int, str]:
        logits = prompt_forward(model, batch).logits
        option_logits = letters.mask_missing_options(logits[:, -1, self.letter_ids], batch["num_choices"])
        predicted = letters.to_letters(option_logits)
        return {row: predicted[row] for row, is_choice in enumerate(choice_rows) if is_choice}


def letter_scoring(letter_ids: list[int], logits: torch.Tensor, batch: dict) -> dict[str, EvalValue]:
    """Accuracy of answering choice rows by the LM's option-letter logits (no extra parameters)."""
    choice_rows = batch["is_choice"] & (batch["choice_label"] >= 0)
    if not choice_rows.any():
        return {}
    at_answer = at_answer_positions(logits, batch, batch["input_ids"].shape[1])[choice_rows]  # (choices, vocab)
    option_logits = letters.mask_missing_options(at_answer[:, letter_ids], batch["num_choices"][choice_rows])
    gold = batch["choice_label"][choice_rows]
    return {"letter_accuracy": EvalValue(letters.accuracy(option_logits, gold), int(choice_rows.sum()))}
