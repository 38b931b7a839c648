"""The causal language-model head: next-token cross-entropy on the trained (answer) tokens."""

import torch

from core.batch_layout import example_rows
from core.constants import IGNORE_INDEX
from core.step_loss import step_divisor, trained_tokens_in
from modules.generation.plan import GenerationPlan, generate_for_rows
from modules.heads import letters
from modules.heads.base import EvalValue, Head, prompt_forward
from modules.heads.kept_logits import forward_keeping, kept_rows, next_token_labels
from modules.heads.token_measures import token_measures


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

        Dividing by the step's trained-token count (not this micro-batch's) makes accumulated
        micro-batches add up to the true mean. Logits exist only at the trained positions; the token
        accuracy and entropy are read from them, with the same divisor (token_measures.py).
        """
        targets = next_token_labels(batch["labels"])  # (batch, seq)
        keep = targets != IGNORE_INDEX
        divisor = step_divisor(batch, "step_trained_tokens")
        outputs = forward_keeping(model, batch, keep, targets, divisor=divisor)
        return {"loss": outputs.loss, **token_measures(outputs.logits, targets[keep], divisor)}

    def evaluation(self, model, batch: dict) -> dict[str, EvalValue]:
        targets = next_token_labels(batch["labels"])
        scored = letter_scored_rows(batch)
        keep = with_answer_positions(targets != IGNORE_INDEX, batch, scored)
        outputs = forward_keeping(model, batch, keep, targets)  # letter cells are -100 in targets: no loss
        trained_tokens = trained_tokens_in(batch)
        values = {"loss": EvalValue(outputs.loss, trained_tokens)}
        values.update({name: EvalValue(mean, trained_tokens) for name, mean in
                       token_measures(outputs.logits, targets[keep], max(trained_tokens, 1)).items()})
        values.update(letter_scoring(self.letter_ids, outputs.logits, keep, batch, scored))
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
        logits = prompt_forward(model, batch).logits  # (batch, 1, vocab): the prompts' last position
        option_logits = letters.mask_missing_options(logits[:, -1, self.letter_ids], batch["num_choices"])
        predicted = letters.to_letters(option_logits)
        return {row: predicted[row] for row, is_choice in enumerate(choice_rows) if is_choice}


def letter_scored_rows(batch: dict) -> torch.Tensor:
    """(examples,) True for labelled choice records: those letter scoring is measured on."""
    return batch["is_choice"] & (batch["choice_label"] >= 0)


def with_answer_positions(keep: torch.Tensor, batch: dict, rows: torch.Tensor) -> torch.Tensor:
    """``keep`` plus the answer position (where the option letter is predicted) of the examples in ``rows``."""
    keep = keep.clone()
    keep[example_rows(batch)[rows], batch["answer_position"][rows]] = True
    return keep


def letter_scoring(letter_ids: list[int], kept_logits: torch.Tensor, keep: torch.Tensor, batch: dict,
                   scored: torch.Tensor) -> dict[str, EvalValue]:
    """Accuracy of answering choice rows by the LM's option-letter logits (no extra parameters).

    ``kept_logits`` are (kept, vocab) for the cells of ``keep``, which holds the scored rows' answer positions.
    """
    if not scored.any():
        return {}
    rows = scored.nonzero().squeeze(-1)
    cells = kept_rows(keep, example_rows(batch)[rows], batch["answer_position"][rows])
    at_answer = kept_logits[cells]  # (scored, vocab)
    option_logits = letters.mask_missing_options(at_answer[:, letter_ids], batch["num_choices"][scored])
    gold = batch["choice_label"][scored]
    return {"letter_accuracy": EvalValue(letters.accuracy(option_logits, gold), int(scored.sum()))}
