"""Model families. Importing this package registers every model in models.registry."""

from models.registry import create_model, list_models, model_spec, register_model  # noqa: F401
