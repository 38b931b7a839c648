"""lm-evaluation-harness tasks shipped with the project: they need no hub (``sft eval``'s default).

- ``sft_bundled.yaml``: the group of both tasks below.
- ``sft_bundled_choice.yaml``: the bundled test file's multiple-choice questions, scored by likelihood.
- ``sft_bundled_math.yaml``: its word problems, answered greedily and scored as ``sft test`` scores math.
- ``bundled_docs.py``: the documents (prompts as training renders them) and the math scorer.
"""
