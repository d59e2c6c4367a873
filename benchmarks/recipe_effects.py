"""What the training recipe does to test Dice, on the realistic synthetic data: flips vs nnU-Net's augmentation,
softmax classes vs region-based, each with and without the post-processing chosen on validation.

    python benchmarks/recipe_effects.py [--cases 40] [--seeds 24 42 123] [--epochs 10] [--iters 40]

Every configuration trains the same model on the same splits with the same fixed budget (``--iters_per_epoch``
x ``--epochs`` optimizer steps at batch 2) and ``--postprocess``; the raw figures come from
``evaluate_experiment.py``'s ``--no_postprocess`` path on the same checkpoints. Prints one markdown table (mean
and std over seeds of the test Dice of WT, TC, ET and their mean) and, last, one line per configuration. The
synthetic data are not BraTS: the table says what the recipe does here, not on real scans.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from evaluate_experiment import evaluate_run  # noqa: E402
from experiment.config import ExperimentConfig  # noqa: E402
from run.loop import run_experiment  # noqa: E402

CONFIGS = {
    "flips, softmax": {"augmentation": "flips", "region_based": False},
    "nnunet, softmax": {"augmentation": "nnunet", "region_based": False},
    "flips, region-based": {"augmentation": "flips", "region_based": True},
    "nnunet, region-based": {"augmentation": "nnunet", "region_based": True},
}
COLUMNS = ["test_dice_wt", "test_dice_tc", "test_dice_et", "test_dice_mean"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data_path", default=None, help="where the synthetic data go (default: a temporary folder)")
    p.add_argument("--results_dir", default=None)
    p.add_argument("--cases", type=int, default=40)
    p.add_argument("--seeds", type=int, nargs="+", default=[24, 42, 123])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--iters", type=int, default=40, help="optimizer steps per epoch")
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--model", default="unet3d_xs")
    p.add_argument("--num_workers", type=int, default=0)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data_path or Path(tmp) / "data")
        results = Path(args.results_dir or Path(tmp) / "results")
        rows = []
        for name, options in CONFIGS.items():
            cfg = ExperimentConfig(data_path=str(data), dataset_version="synthetic", synthetic_cases=args.cases,
                                   dim="3d", models=[args.model], patch_size=[args.patch] * 3, epochs=args.epochs,
                                   iters_per_epoch=args.iters, batch_size=2, seeds=args.seeds, postprocess=True,
                                   num_workers=args.num_workers, results_dir=str(results / name.replace(", ", "_")),
                                   measure_efficiency=False, deterministic=True, **options)
            summary = run_experiment(cfg)
            post = pd.read_csv(summary.run_dir / "integrated_experiment_results.csv")
            raw = evaluate_run(summary.run_dir, postprocess=False)
            for label, table in (("raw", raw), ("post-processed", post)):
                rows.append({"recipe": name, "output": label, **{c: table[c].mean() for c in COLUMNS},
                             **{f"{c}_std": table[c].std() for c in COLUMNS}, "units": len(table),
                             "rules": "; ".join(sorted(set(post["postprocess_rule"].astype(str))))
                             if label == "post-processed" else ""})
    table = pd.DataFrame(rows)
    print("| recipe | output | WT | TC | ET | mean | units |")
    print("|---|---|---|---|---|---|---|")
    for r in table.itertuples():
        cells = [f"{getattr(r, c):.3f} ± {getattr(r, c + '_std'):.3f}" for c in COLUMNS]
        print(f"| {r.recipe} | {r.output} | {' | '.join(cells)} | {r.units} |")
    for r in table[table["output"] == "post-processed"].itertuples():
        print(f"rules of {r.recipe}: {r.rules}")
    print(" ".join(f"{r.recipe.replace(', ', '+').replace(' ', '_')}:{r.output[:3]}={r.test_dice_mean:.4f}"
                   for r in table.itertuples()))


if __name__ == "__main__":
    main()
