"""Implementation package of the BraTS data layer.

The public front is ``data_loader.py`` at the repository root, which re-exports the names of
``docs/INTERFACES.md``; import from there.  Modules:

- ``cases``: layouts, case discovery, validation, label mapping, normalisation, ``load_case``
- ``dataset_json``: MSD / nnU-Net ``dataset.json`` channels and labels mapped to the suite's by name
- ``synthetic``: the deterministic synthetic BraTS generator
- ``splits``: patient-level hold-out and k-fold splits
- ``cache``: the preprocessed, memory-mapped per-case cache
- ``datasets``: 3D patch and 2D slice torch datasets reading the cache
"""
