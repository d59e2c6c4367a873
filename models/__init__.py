"""Model families. Importing this package registers every model in models.registry."""

import models.dualbranch  # noqa: F401  (dual-/multi-branch families)
import models.multibranch  # noqa: F401
from models import transformers, unet  # noqa: F401  (importing a family registers its models)
from models.registry import create_model, list_models, model_spec, register_model  # noqa: F401
