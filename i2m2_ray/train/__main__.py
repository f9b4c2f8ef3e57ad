"""``python -m i2m2_ray.train [CONFIG.yaml] [key=value ...]``: train one variant once.

``workers=N`` (N > 1 runs under Ray Train), ``strategy=ddp|fsdp``, ``gpu=auto|true|false``,
``launcher=auto|local|ray``; ``optim.batch_size`` is the global batch, split evenly over workers.
"""

from __future__ import annotations

import argparse
import json
import sys

from i2m2_ray.errors import I2M2Error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m i2m2_ray.train", description=__doc__)
    parser.add_argument("args", nargs="*", help="an optional CONFIG.yaml, then key=value overrides")
    ns = parser.parse_args(argv)
    config = None
    overrides = list(ns.args)
    if overrides and "=" not in overrides[0]:
        config = overrides.pop(0)
    try:
        from i2m2_ray.cluster import init_ray
        from i2m2_ray.train import load_train_config
        from i2m2_ray.train.distributed import run_training, use_ray

        cfg = load_train_config(config, overrides)
        if use_ray(cfg):
            init_ray(quiet=True)
        result = run_training(cfg)
    except I2M2Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: checkpoints so far are kept; re-run the same command to resume", file=sys.stderr)
        return 130
    shown = {k: v for k, v in result.items() if "/expert/" not in k and "auroc/" not in k}
    print(json.dumps(shown, indent=2, default=float))
    print(f"run directory: {cfg.run_dir} (model.pt, final.json, config.yaml, tensorboard/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
