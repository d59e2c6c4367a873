"""Public facade kept for scripts outside the project (SPEC: ``utils.experiment_utils.get_model``).

Nothing inside the project imports this module: the model registry's public API is ``models``
(``models.get_model``, ``models.list_models``, ``models.model_spec``), seeding and mixed precision live
in ``utils.runtime``. This facade is the one module of ``utils`` that imports ``models``; the package
dependency test (tests/test_architecture.py) lists it as a facade.
"""

from __future__ import annotations

from models import get_model, list_models, model_spec
from models.registry import ModelSpec
from utils.runtime import autocast_context, set_seed

__all__ = ["ModelSpec", "autocast_context", "get_model", "list_models", "model_spec", "set_seed"]
