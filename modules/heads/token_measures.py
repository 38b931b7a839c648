"""What TRL's SFTTrainer logs beside the loss, from the logits the LM head already has: mean token
accuracy and entropy over the trained tokens.

No extra forward pass: the head keeps logits only at the trained positions (``kept_logits.py``), so
these are the (kept, vocab) logits the loss was computed from, read once more under ``no_grad``
(nothing is kept for backward). Entropy needs the softmax of every kept row; it is taken a few
hundred rows at a time, so its float32 copy stays small beside the logits themselves.

- ``mean_token_accuracy``: the share of trained tokens whose most likely next token (argmax) is the
  label: a loss that falls while this stays flat is the model growing surer, not righter;
- ``entropy``: the mean entropy (nats) of the predicted distribution at those tokens: it falls as
  the model commits to answers; a collapse towards 0 early is a sign of overfitting the format.

Both are returned as sums divided by ``divisor`` (the whole optimizer step's trained tokens in
training), so the micro-batches of a step add up to the step's mean, as the loss does.
"""

import torch

from core.constants import IGNORE_INDEX

ROWS_PER_CHUNK = 256  # rows of (kept, vocab) logits turned into probabilities at once


@torch.no_grad()
def token_measure_sums(kept_logits: torch.Tensor, kept_targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sums over the trained rows of ``kept_logits`` (kept, vocab) whose target is not -100: correct
    argmax predictions and entropy (nats).

    >>> logits = torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 5.0]])
    >>> sums = token_measure_sums(logits, torch.tensor([0, 1, -100]))
    >>> int(sums["correct"]), round(float(sums["entropy"]), 4)  # row 1 is a tie (argmax 0): wrong; row 2 untrained
    (1, 1.0585)
    """
    trained = kept_targets != IGNORE_INDEX
    logits, targets = kept_logits[trained], kept_targets[trained]
    correct = (logits.argmax(dim=-1) == targets).sum()
    entropy = logits.new_zeros((), dtype=torch.float32)
    for chunk in logits.split(ROWS_PER_CHUNK):
        log_probs = chunk.float().log_softmax(dim=-1)  # (rows, vocab)
        entropy += -(log_probs.exp() * log_probs).sum()
    return {"correct": correct, "entropy": entropy}


def token_measures(kept_logits: torch.Tensor, kept_targets: torch.Tensor, divisor) -> dict[str, torch.Tensor]:
    """``mean_token_accuracy`` and ``entropy`` as this batch's share of a mean over ``divisor`` tokens."""
    sums = token_measure_sums(kept_logits, kept_targets)
    divisor = torch.as_tensor(divisor, device=kept_logits.device, dtype=torch.float32)
    return {"mean_token_accuracy": sums["correct"].float() / divisor, "entropy": sums["entropy"] / divisor}
