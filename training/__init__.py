"""Training one unit: ``trainer`` (``UnitTrainer``, its hooks and the trainer registry, ``train_model``),
``augmentation`` (nnU-Net's transforms batched on the device), ``losses`` (Dice + cross-entropy) and
``region_loss`` (Dice + BCE over regions). Nothing is imported here."""
