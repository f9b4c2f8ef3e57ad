"""Dependency regimes on the built-in generator (issue 6, item 3): intra, inter and I2M2 test accuracy
against the Bayes-optimal accuracy, over a grid of intra- and inter-modality strengths.

Per cell and seed it follows the method's order with the project's training loop (``train``):
unimodal image, unimodal audio and inter LF first, then intra and I2M2 LF initialised from them.
One fixed configuration for every cell (SGD lr 0.02, momentum 0.9, batch 40, 10 epochs, the
val-best epoch kept), so the cells differ only by the data; the searched comparison is the AV-MNIST
table. Two processes share the CPUs (one torch thread each). "I2M2 - best baseline" comes with a paired
bootstrap interval over the test rows (each row's correctness averaged over the seeds' models;
Bonferroni-corrected over the cells), and a verdict: better, worse or "not significant".
Usage: python -m bench.dependency_regimes [--intra 0 0.4 0.8] [--inter 0 0.5 1] [--seeds 0 1] [--smoke]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS, environment, save

STAGE1 = ("unimodal:image", "unimodal:audio", "inter:lf")
REPORTED = ("intra", "inter:lf", "i2m2:lf")


def run_cell(job: dict[str, Any]) -> dict[str, Any]:
    """Stage 1 then stage 2 for one (cell, seed); returns each variant's test accuracy."""
    import torch

    from i2m2_ray.train import load_train_config, train

    torch.set_num_threads(1)
    work = Path(job["work"])
    base = [f"dataset.path={job['data']}", "tensorboard=false", f"epochs={job['epochs']}", "patience=null",
            "optim.lr=0.02", "optim.momentum=0.9", "optim.batch_size=40", f"seed={job['seed']}", "threads=1",
            "keep_checkpoints=1"]
    acc, models, correct = {}, {}, {}
    for variant in (*STAGE1, "intra", "i2m2:lf"):
        run_dir = work / variant.replace(":", "_")
        init = {"intra": {"image": models.get("unimodal:image"), "audio": models.get("unimodal:audio")},
                "i2m2:lf": {"image": models.get("unimodal:image"), "audio": models.get("unimodal:audio"),
                            "inter": models.get("inter:lf")}}.get(variant, {})
        cfg = load_train_config(None, [*base, f"variant={variant}", f"run_dir={run_dir}"],
                                extra={"init": {k: str(v) for k, v in init.items()}})
        acc[variant] = train(cfg, console=False)["test/accuracy"]
        models[variant] = run_dir / "model.pt"
        if variant in REPORTED:
            correct[variant] = test_correct(run_dir)
    return {**job, "acc": acc, "correct": correct}


def test_correct(run_dir: Path) -> list[float]:
    """Per test row: 1 if the run's model classifies it correctly, else 0 (for the paired interval)."""
    from i2m2_ray.tune.comparison import predictions
    from i2m2_ray.tune.diagnosis import row_scores

    return row_scores(*predictions(run_dir))[0].tolist()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--intra", type=float, nargs="+", default=[0.0, 0.4, 0.8])
    ap.add_argument("--inter", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--rows", type=int, nargs=3, default=[1200, 400, 600], metavar=("TRAIN", "VAL", "TEST"))
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="one cell, one seed, one epoch, tiny data")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.smoke:
        args.intra, args.inter, args.seeds, args.epochs, args.rows = [0.5], [0.5], [0], 1, [80, 40, 40]
    out = args.out or (Path(tempfile.gettempdir()) / "i2m2-bench-smoke" if args.smoke else RESULTS)

    from i2m2_ray.data.synthetic import SyntheticConfig, bayes_accuracy, generate

    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="i2m2-regimes-") as tmp:
        jobs = []
        for intra in args.intra:
            for inter in args.inter:
                cfg = SyntheticConfig(intra_strength=intra, inter_strength=inter, train_size=args.rows[0],
                                      val_size=args.rows[1], test_size=args.rows[2], seed=0)
                data = generate(cfg, Path(tmp) / f"data_{intra}_{inter}")
                jobs += [{"intra": intra, "inter": inter, "seed": s, "data": str(data), "epochs": args.epochs,
                          "work": str(Path(tmp) / f"run_{intra}_{inter}_{s}")} for s in args.seeds]
        with get_context("spawn").Pool(args.processes) as pool:
            done = []
            for result in pool.imap_unordered(run_cell, jobs):
                done.append(result)
                print(f"  cell intra {result['intra']} inter {result['inter']} seed {result['seed']}: "
                      + ", ".join(f"{v} {a:.3f}" for v, a in result["acc"].items()), flush=True)
    from i2m2_ray.tune.diagnosis import paired_bootstrap

    level = 1 - 0.05 / (len(args.intra) * len(args.inter))  # 95 % over all cells together (Bonferroni)
    rows = []
    for intra in args.intra:
        for inter in args.inter:
            runs = [d for d in done if d["intra"] == intra and d["inter"] == inter]
            cell = [d["acc"] for d in runs]
            row: dict[str, Any] = {"intra_strength": intra, "inter_strength": inter,
                                   "bayes %": round(100 * bayes_accuracy(4, intra, inter), 1)}
            for v in ("unimodal:image", "unimodal:audio", *REPORTED):
                vals = [100 * c[v] for c in cell]
                spread = f" ± {statistics.stdev(vals):.1f}" if len(vals) > 1 else ""
                row[f"{v} %"] = f"{statistics.mean(vals):.1f}{spread}"
            base = max(("intra", "inter:lf"), key=lambda v: statistics.mean(c[v] for c in cell))
            diff = np.mean([d["correct"]["i2m2:lf"] for d in runs], axis=0) - np.mean(
                [d["correct"][base] for d in runs], axis=0)
            mean, low, high = (100 * x for x in paired_bootstrap(diff, 2000, 0, level))
            row.update({"best baseline": base, "i2m2 - best baseline (pts)": round(mean, 1),
                        "interval": f"[{low:+.1f}, {high:+.1f}]",
                        "verdict": "better" if low > 0 else "worse" if high < 0 else "not significant"})
            rows.append(row)
    env = environment(command="python -m bench.dependency_regimes " + " ".join(sys.argv[1:]),
                      classes=4, rows_train_val_test=args.rows, epochs=args.epochs, seeds=args.seeds,
                      interval=f"paired bootstrap over test rows, 2000 resamples, level {level:.4f} per cell",
                      recipe="SGD lr 0.02 momentum 0.9 batch 40, val-best epoch, I2M2/intra initialised from stage 1",
                      wall_s=round(time.time() - t0))
    notes = ("Chance is 25 %. intra_strength is how often each modality's latent symbol equals the label; "
             "inter_strength is how often the label is (a + b) mod 4 of the two symbols, which neither modality "
             "predicts alone. 'bayes %' is the exact accuracy of the Bayes classifier that sees both latent "
             "symbols; the models see noisy images and waveforms of them, so they stay below it. Mean ± sample "
             f"std over seeds {args.seeds} (training seed; the data are fixed per cell); "
             f"test split of {args.rows[2]} rows.")
    save("dependency_regimes", "Dependency regimes: intra, inter and I2M2 against the Bayes-optimal accuracy",
         env, rows, notes=notes, out=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
