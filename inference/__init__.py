"""Inference: a checkpoint's model (or an ensemble) -> probabilities and labels (``predictor``), post-processing
chosen on validation (``postprocess``), NIfTI export of a run's test cases and of new scans (``export``, used by
``evaluate_experiment.py --export_predictions`` and ``predict.py``), and the official BraTS evaluation in its own
environment (``official_eval``). Nothing is imported here."""
