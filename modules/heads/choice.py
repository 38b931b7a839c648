"""The choice head, and the multi head that routes each record to the LM or the choice head.

The choice head is a linear classifier over the backbone's last hidden state at the end of the
prompt (the position where the answer's first token is predicted), one logit per option letter;
options a record lacks are masked out, so they can never be predicted. The multi head sends
``choice`` records through it and every other record through the LM head, in the same forward
pass; its loss is ``lm_weight * lm_loss + choice_weight * choice_loss``, each logged apart.
"""

from dataclasses import dataclass

import torch
from torch import nn

from core.batch_layout import cells_of_examples
from core.constants import IGNORE_INDEX
from core.step_loss import step_divisor, trained_tokens_in
from modules.generation.plan import GenerationPlan, generate_for_rows
from modules.heads import letters
from modules.heads.base import EvalValue, Head, at_answer_positions, prompt_forward
from modules.heads.kept_logits import forward_keeping, next_token_labels
from modules.heads.lm import letter_scored_rows, letter_scoring, with_answer_positions
from modules.heads.token_measures import token_measures


@dataclass
class MultiPass:
    """What one forward pass of the multi head gives."""

    lm_loss: torch.Tensor  # token loss of the non-choice rows (a mean, or a sum over the given divisor)
    option_logits: torch.Tensor  # (choice rows, max_choices), missing options masked
    choice_rows: torch.Tensor  # (batch,) bool
    letter_values: dict  # letter-scoring accuracy of the labelled choice rows (evaluation only)
    lm_measures: dict  # token accuracy and entropy of the non-choice rows, over the same divisor as lm_loss


class MultiHead(Head):
    def __init__(self, lm_weight: float = 1.0, choice_weight: float = 1.0, max_choices: int = 5,
                 init_from_letters: bool = True):
        """
        Args:
            lm_weight: Weight of the LM loss (non-choice records) in the total loss.
            choice_weight: Weight of the choice-head loss (choice records) in the total loss.
            max_choices: Most options a choice record may have (A, B, ... up to this many).
            init_from_letters: Start the classifier from the LM head's rows of the option-letter
                tokens, so before training it answers exactly as letter scoring does and training
                starts from what the model already knows; false: a random classifier.
        """
        super().__init__()
        self.lm_weight, self.choice_weight, self.max_choices = lm_weight, choice_weight, max_choices
        self.init_from_letters = init_from_letters
        self.classifier: nn.Linear | None = None
        self.letter_ids: list[int] = []

    def setup(self, model, tokenizer) -> None:
        hidden_size = model.get_input_embeddings().embedding_dim
        self.classifier = nn.Linear(hidden_size, self.max_choices)
        self.letter_ids = letters.letter_token_ids(tokenizer, self.max_choices)
        if self.init_from_letters:
            self._copy_letter_rows(model.get_output_embeddings())

    @torch.no_grad()
    def _copy_letter_rows(self, lm_head: nn.Linear) -> None:
        """classifier(h) = the LM head's letter logits at h (the last hidden state is after the final norm)."""
        self.classifier.weight.copy_(lm_head.weight[self.letter_ids].float())
        lm_bias = getattr(lm_head, "bias", None)
        self.classifier.bias.copy_(lm_bias[self.letter_ids].float() if lm_bias is not None else 0.0)

    def _check_options(self, batch: dict) -> None:
        most = int(batch["num_choices"].max()) if len(batch["num_choices"]) else 0
        if most > self.max_choices:
            raise ValueError(f"a choice record has {most} options but the head's max_choices is {self.max_choices}")

    def _option_logits(self, hidden_states: torch.Tensor, batch: dict, input_length: int, rows) -> torch.Tensor:
        """Masked (rows, max_choices) logits of the classifier at the answer positions."""
        at_answer = at_answer_positions(hidden_states, batch, input_length)[rows]  # (rows, hidden)
        option_logits = self.classifier(at_answer.to(self.classifier.weight.dtype))
        return letters.mask_missing_options(option_logits, batch["num_choices"][rows])

    def _parts(self, model, batch: dict, lm_divisor=None, score_letters: bool = False) -> MultiPass:
        """One forward pass: LM losses on non-choice rows, option logits of the choice rows.

        LM logits are computed only at the non-choice rows' trained positions (and, to compare the
        classifier with letter scoring, at the choice rows' answer positions).
        """
        self._check_options(batch)
        choice_rows = batch["is_choice"]
        choice_cells = cells_of_examples(batch, choice_rows)  # (rows, seq): the tokens of choice records
        lm_targets = next_token_labels(batch["labels"]).masked_fill(choice_cells, IGNORE_INDEX)
        keep = lm_targets != IGNORE_INDEX
        scored = letter_scored_rows(batch) if score_letters else torch.zeros_like(choice_rows)
        keep = with_answer_positions(keep, batch, scored)
        outputs = forward_keeping(model, batch, keep, lm_targets, divisor=lm_divisor, hidden=True)
        option_logits = self._option_logits(outputs.hidden_states[-1], batch, batch["input_ids"].shape[1], choice_rows)
        letter_values = letter_scoring(self.letter_ids, outputs.logits, keep, batch, scored)
        divisor = lm_divisor if lm_divisor is not None else max(trained_tokens_in(batch, ~choice_rows), 1)
        lm_measures = token_measures(outputs.logits, lm_targets[keep], divisor)  # letter cells: -100, left out
        return MultiPass(outputs.loss, option_logits, choice_rows, letter_values, lm_measures)

    def training_loss(self, model, batch: dict) -> dict[str, torch.Tensor]:
        parts = self._parts(model, batch, lm_divisor=step_divisor(batch, "step_lm_tokens"))
        lm_loss = parts.lm_loss
        gold = batch["choice_label"][parts.choice_rows].to(parts.option_logits.device)
        choice_sum = nn.functional.cross_entropy(parts.option_logits, gold, reduction="sum")  # 0 without choice rows
        choice_loss = choice_sum / step_divisor(batch, "step_choice_records").to(choice_sum.device)
        loss = self.lm_weight * lm_loss + self.choice_weight * choice_loss
        return {"loss": loss, "lm_loss": lm_loss, "choice_loss": choice_loss, **parts.lm_measures}

    def evaluation(self, model, batch: dict) -> dict[str, EvalValue]:
        parts = self._parts(model, batch, score_letters=True)
        lm_tokens = trained_tokens_in(batch, ~parts.choice_rows)
        values = {"lm_loss": EvalValue(parts.lm_loss, lm_tokens)} if lm_tokens else {}
        values.update({name: EvalValue(mean, lm_tokens) for name, mean in parts.lm_measures.items() if lm_tokens})
        labelled = batch["choice_label"][parts.choice_rows] >= 0
        if labelled.any():
            option_logits = parts.option_logits[labelled]
            gold = batch["choice_label"][parts.choice_rows][labelled].to(option_logits.device)
            values["choice_loss"] = EvalValue(nn.functional.cross_entropy(option_logits, gold), len(gold))
            values["choice_accuracy"] = EvalValue(letters.accuracy(option_logits, gold), len(gold))
            values.update(parts.letter_values)
        total = sum(self._weight(name) * value.value for name, value in values.items() if name.endswith("_loss"))
        values["loss"] = EvalValue(torch.as_tensor(total), len(batch["ids"]))
        return values

    def _weight(self, loss_name: str) -> float:
        return self.lm_weight if loss_name == "lm_loss" else self.choice_weight

    def predict(self, model, tokenizer, batch: dict, plan: GenerationPlan) -> list:
        choice_rows = batch["is_choice"].tolist()
        generated_rows = [row for row, is_choice in enumerate(choice_rows) if not is_choice]
        answers = dict(zip(generated_rows, generate_for_rows(model, tokenizer, batch, plan, generated_rows)))
        if any(choice_rows):
            answers.update(self._choice_answers(model, batch))
        return [answers[row] for row in range(len(choice_rows))]

    @torch.no_grad()
    def _choice_answers(self, model, batch: dict) -> dict[int, str]:
        self._check_options(batch)
        outputs = prompt_forward(model, batch, hidden=True)  # logits of the last position only; hidden states all
        last_hidden = outputs.hidden_states[-1][:, -1]  # (batch, hidden): left padding puts the prompt end last
        option_logits = letters.mask_missing_options(self.classifier(last_hidden.to(self.classifier.weight.dtype)),
                                                     batch["num_choices"])
        predicted = letters.to_letters(option_logits)
        return {row: predicted[row] for row, is_choice in enumerate(batch["is_choice"].tolist()) if is_choice}


class ChoiceHead(MultiHead):
    """Only the choice classifier is trained; other records (if any) are answered by the untrained LM."""

    def __init__(self, max_choices: int = 5, init_from_letters: bool = True):
        """
        Args:
            max_choices: Most options a choice record may have (A, B, ... up to this many).
            init_from_letters: Start from the LM head's option-letter rows (see MultiHead).
        """
        super().__init__(lm_weight=0.0, choice_weight=1.0, max_choices=max_choices,
                         init_from_letters=init_from_letters)
