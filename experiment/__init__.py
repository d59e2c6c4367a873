"""What a run is: its configuration (``config``: ``ExperimentConfig``, the CLI table, loading a run's config), its
folder (``run_folder``: every file name and column, ``UnitKey``, the one writer), its units and shards
(``sharding``) and its data (``data``: cases, cache, splits, loaders over ``brats_data/``).

The phases above read these: ``inference/``, ``evaluation/``, ``training/``, then ``run/`` (the loop). Nothing is
imported here, so ``experiment.run_folder`` can be read without loading torch models.
"""
