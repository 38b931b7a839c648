"""Scoring answers against ``Record``s, and reports; reads records and answers, never the CLI.

- ``answer_extraction.py`` (the scored part of a generated text), ``metrics.py``, ``scoring.py``.
- ``code_execution.py`` over ``sandbox.py`` / ``sandbox_launcher.py``: generated code run safely.
- ``answer_files.py`` and ``answer_journal.py``: answers written whole, and kept across a kill.
- ``report.py``, ``score_bars.py``, ``curves.py``, ``run_table.py``: base vs tuned, per-type bars, loss curves,
  run tables; ``run_images.py``: the report's figures in the training run's TensorBoard events.
- ``harness.py`` with ``harness_source.py`` and ``harness_tasks/``: ``sft eval``, lm-evaluation-harness on a model.
"""
