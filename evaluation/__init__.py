"""Evaluation: metrics per question type, and running generated code safely."""
