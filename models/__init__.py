"""Model families. Importing this package registers every model in models.registry.

- ``unet``: the U-Nets (``unet3d_*``, incl. the single-branch models of the modality comparison)
- ``transformers``: UNETR, SwinUNETR, MobileUNETR
- ``nnunet``: nnU-Net v2's PlainConvUNet and residual-encoder U-Nets (dynamic-network-architectures)
- ``monai_baselines``: MedNeXt, SegResNet, SwinUNETR-V2 (built by MONAI)
- ``dualbranch``: the variant tables of the multi-branch U-Net (``dualbranch_*``, ``quadbranch_*``);
  the generic class is in ``multibranch``
"""

from models import (  # noqa: F401  (importing a family registers its models)
    dualbranch,
    monai_baselines,
    nnunet,
    transformers,
    unet,
)
from models.registry import (  # noqa: F401  (the public API of the model zoo)
    ModelSpec,
    Published,
    create_model,
    deploy,
    get_model,
    list_models,
    model_spec,
    register_model,
)
