"""Launched by torchrun from tests/test_training_checks.py (not a test itself): runs the CLI with a
non-finite loss (model unet3d_xs) or a stop request (model unet3d_stride_xs) injected on rank 1
only, at the second step of epoch 1, and records on every rank where its check raised.

    python -m torch.distributed.run --nproc_per_node=2 tests/ddp_inject.py RECORD_DIR CLI_ARGS...
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import integrated_experiment  # noqa: E402
from training import trainer as training  # noqa: E402

RANK = int(os.environ["RANK"])
RECORD = Path(sys.argv[1])
training.CHECK_EVERY = 2  # so the checks inside an epoch run, not only the one at its end
compute_loss, check = training.UnitTrainer.compute_loss, training.UnitTrainer.check
steps: dict[tuple[str, int], int] = {}


def inject(self, logits, label):
    loss = compute_loss(self, logits, label)
    key = (self.model_name, self.epoch)
    steps[key] = steps.get(key, 0) + 1
    if RANK == 1 and self.epoch == 1 and steps[key] == 2:
        if self.model_name == "unet3d_xs":
            return loss * float("nan")
        training.STOP.requested = True
    return loss


def recording_check(self, stats, n):
    try:
        check(self, stats, n)
    except Exception as exc:
        record = {"epoch": self.epoch, "step": n, "error": type(exc).__name__}
        (RECORD / f"{self.model_name}_rank{RANK}.json").write_text(json.dumps(record))
        raise


training.UnitTrainer.compute_loss = inject
training.UnitTrainer.check = recording_check
sys.exit(integrated_experiment.main(sys.argv[2:]))
