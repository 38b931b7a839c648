"""Output heads: how the backbone's outputs become losses and answers.

A head is a swappable part of the model, chosen in YAML by ``class_path``:

- ``modules.heads.LMHead``: the causal-LM head (default);
- ``modules.heads.ChoiceHead``: a classifier over option letters for ``choice`` records;
- ``modules.heads.MultiHead``: both, routed per record by its type, loss = weighted sum.

``kept_logits.py`` computes LM logits only where tokens are trained; ``token_measures.py`` reads the
LM head's token accuracy and entropy from them.
"""

from modules.heads.base import EvalValue, Head
from modules.heads.choice import ChoiceHead, MultiHead
from modules.heads.lm import LMHead

__all__ = ["ChoiceHead", "EvalValue", "Head", "LMHead", "MultiHead"]
