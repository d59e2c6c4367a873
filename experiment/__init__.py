"""The experiment package: configuration, run folder, training, evaluation, efficiency and the loop.

Read it in this order: ``config`` (what a run depends on) -> ``run_folder`` (every file it writes)
-> ``data`` (cases, cache, splits, loaders) -> ``training`` (one unit) -> ``evaluation``
(sliding-window prediction and metrics) -> ``efficiency`` (params, FLOPs, PAM, latency) ->
``loop`` (seeds x folds x models; the only loop). ``experiment_runner.py`` is the public facade.

Nothing is imported here, so ``experiment.run_folder`` can be read without loading torch models.
"""
