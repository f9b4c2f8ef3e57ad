"""``python -m i2m2_ray.tune [EXPERIMENT] [key=value ...]``: search, train and compare every variant.

EXPERIMENT is a YAML file or the name of a shipped one (default, smoke, avmnist, fastmri, features);
the default is ``default``. ``--smoke`` runs ``smoke``: every phase on a tiny budget, about a minute
on 2 CPUs. Re-running the same command resumes.
"""

from __future__ import annotations

import sys

from i2m2_ray.cli import Stopped, config_parser, parse_config_args, quiet_ray, run_cli


def main(argv: list[str] | None = None) -> int:
    parser = config_parser("i2m2-tune", __doc__, "an optional EXPERIMENT.yaml or shipped name (default: default)")
    parser.add_argument("--smoke", action="store_true",
                        help="run the shipped smoke experiment (search_spaces/smoke.yaml); overrides still apply")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", dest="resume", action="store_true", default=True,
                       help="continue an interrupted experiment in output_dir (the default)")
    group.add_argument("--no-resume", dest="resume", action="store_false",
                       help="refuse to run if output_dir already holds an experiment")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray cluster (default: all)")
    ns = parse_config_args(parser, argv)
    if ns.smoke and ns.config is not None:
        parser.error(f"--smoke runs the shipped smoke experiment; drop {ns.config!r} or --smoke")

    def body() -> None:
        quiet_ray()
        from i2m2_ray.resources import resolve_experiment, shipped_experiment
        from i2m2_ray.tune.experiment import load_experiment
        from i2m2_ray.tune.runner import Interrupted, run_experiment

        name = "smoke" if ns.smoke else None if ns.config else "default"
        path = shipped_experiment(name) if name else resolve_experiment(ns.config)
        exp = load_experiment(path, ns.overrides)
        try:
            run_experiment(exp, resume=ns.resume, num_cpus=ns.num_cpus)
        except Interrupted as exc:
            raise Stopped(str(exc)) from None

    return run_cli(body, "interrupted: finished trials are kept; re-run the same command to resume")


def entry() -> None:
    """The ``i2m2-tune`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
