"""``python -m i2m2_ray.train [CONFIG.yaml] [key=value ...]``: train one variant once.

``workers=N`` (N > 1 runs under Ray Train), ``strategy=ddp|fsdp``, ``gpu=auto|true|false``,
``launcher=auto|local|ray``; ``optim.batch_size`` is the global batch, split evenly over workers.
"""

from __future__ import annotations

import json
import sys

from i2m2_ray.cli import config_parser, parse_config_args, quiet_ray, run_cli


def main(argv: list[str] | None = None) -> int:
    parser = config_parser("i2m2-train", __doc__, "an optional CONFIG.yaml (default: i2m2_ray/configs/train.yaml)")
    ns = parse_config_args(parser, argv)

    def body() -> None:
        quiet_ray()
        from i2m2_ray.cluster import init_ray
        from i2m2_ray.train import load_train_config
        from i2m2_ray.train.distributed import run_training, use_ray

        cfg = load_train_config(ns.config, ns.overrides)
        if use_ray(cfg):
            init_ray(quiet=True)
        result = run_training(cfg)
        shown = {k: v for k, v in result.items() if "/expert/" not in k and "auroc/" not in k}
        print(json.dumps(shown, indent=2, default=float))
        print(f"run directory: {cfg.run_dir} (model.pt, final.json, config.yaml, tensorboard/)")

    return run_cli(body, "interrupted: checkpoints so far are kept; re-run the same command to resume")


def entry() -> None:
    """The ``i2m2-train`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
