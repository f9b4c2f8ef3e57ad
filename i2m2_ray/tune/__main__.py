"""``python -m i2m2_ray.tune [EXPERIMENT.yaml] [key=value ...]``: search, train and compare every variant."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m i2m2_ray.tune", description=__doc__)
    parser.add_argument("args", nargs="*", help="an optional EXPERIMENT.yaml (default: search_spaces/default.yaml), "
                                                "then key=value overrides")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", dest="resume", action="store_true", default=True,
                       help="continue an interrupted experiment in output_dir (the default)")
    group.add_argument("--no-resume", dest="resume", action="store_false",
                       help="refuse to run if output_dir already holds an experiment")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray cluster (default: all)")
    ns = parser.parse_intermixed_args(argv)
    args = list(ns.args)
    path = args.pop(0) if args and "=" not in args[0] else None
    from i2m2_ray.errors import I2M2Error

    try:
        from i2m2_ray.tune.experiment import load_experiment
        from i2m2_ray.tune.runner import Interrupted, run_experiment

        exp = load_experiment(path, args)
        run_experiment(exp, resume=ns.resume, num_cpus=ns.num_cpus)
    except Interrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return 130
    except I2M2Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished trials are kept; re-run the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
