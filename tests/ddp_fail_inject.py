"""Launched by torchrun from tests/test_rank_failure.py (not a test itself): runs the CLI with exceptions
injected in the training forward pass (after the loss, before DDP's backward), described by JSON:

    python -m torch.distributed.run --nproc_per_node=2 tests/ddp_fail_inject.py RECORD_DIR SPEC_JSON CLI_ARGS...

SPEC_JSON is a list of ``{"model", "seed", "epoch", "step", "ranks"}``: at that step (1-based) of that epoch of
that unit, the ranks listed raise ``RuntimeError`` (an out-of-memory error on one GPU, say); ``"step":
"validate"`` raises when that epoch's validation starts instead. Each raise is recorded as
``RECORD_DIR/raised_{model}_{seed}_rank{r}.json`` with its wall-clock time.
"""

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import integrated_experiment  # noqa: E402
from training import trainer as training  # noqa: E402

RANK = int(os.environ["RANK"])
RECORD = Path(sys.argv[1])
SPECS = json.loads(sys.argv[2])
compute_loss, validate = training.UnitTrainer.compute_loss, training.UnitTrainer.validate
steps: dict[tuple[str, int, int], int] = {}


def maybe_raise(self, step):
    for spec in SPECS:
        if (spec["model"], spec["seed"], spec["epoch"], spec["step"]) == (self.model_name, self.key.seed, self.epoch,
                                                                           step) and RANK in spec["ranks"]:
            record = {"time": time.time(), "rank": RANK, "epoch": self.epoch, "step": step}
            (RECORD / f"raised_{self.model_name}_{self.key.seed}_rank{RANK}.json").write_text(json.dumps(record))
            raise RuntimeError(f"out of memory (injected on rank {RANK})")


def inject(self, logits, label):
    loss = compute_loss(self, logits, label)
    key = (self.model_name, self.key.seed, self.epoch)
    steps[key] = steps.get(key, 0) + 1
    maybe_raise(self, steps[key])
    return loss


def inject_validate(self):
    maybe_raise(self, "validate")
    return validate(self)


training.UnitTrainer.compute_loss = inject
training.UnitTrainer.validate = inject_validate
sys.exit(integrated_experiment.main(sys.argv[3:]))
