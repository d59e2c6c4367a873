"""Evaluation: a model's predictions scored per case and summarised (``scoring``: validation Dice, test metrics,
``evaluate_checkpoint``) and its cost measured (``efficiency``: parameters, FLOPs, peak activation memory, latency).
The statistics over per-case tables are pure functions in ``metrics/statistics.py``. Nothing is imported here."""
