"""The run executed: ``loop`` (seeds x folds x models; the only loop), ``callbacks`` (what a caller hooks into a
run), ``logs`` (stdout, stderr and run.log), ``tracking`` (TensorBoard, MLflow), ``rank_failure`` (one rank's failure
ends a torchrun job). Nothing is imported here."""
