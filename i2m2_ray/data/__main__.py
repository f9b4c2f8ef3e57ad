"""``python -m i2m2_ray.data``: prepare datasets and validate them.

  prepare avmnist      --source DIR --out DIR [--val-size 5000]
  prepare avmnist-raw  --mnist DIR --fsdd DIR --out DIR [--pca-components K] [--noise pink] [--seed S] ...
  prepare fastmri      --source DIR --annotations knee.csv --file-list knee_file_list.csv --out DIR
  prepare features     --source FILE.parquet --modality image=img_emb --modality text=txt_emb --out DIR
  prepare builtin      --out DIR
  validate DIR

Errors print one line on stderr (see i2m2_ray/cli.py): exit 2 for bad input, 130 interrupted, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from i2m2_ray.cli import Parser, run_cli


def _parser() -> argparse.ArgumentParser:
    p = Parser(prog="i2m2-data", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="convert a source dataset into Parquet + manifest.json")
    kinds = prep.add_subparsers(dest="kind", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--out", required=True, type=Path, help="output dataset directory")
        sp.add_argument("--overwrite", action="store_true", help="replace an existing dataset (only on success)")
        sp.add_argument("--quiet", action="store_true", help="no progress lines")

    a = kinds.add_parser("avmnist", help="MultiBench npy layout")
    a.add_argument("--source", required=True, type=Path)
    a.add_argument("--val-size", type=int, default=5000)
    common(a)

    r = kinds.add_parser("avmnist-raw", help="rebuild AV-MNIST from raw MNIST IDX + FSDD WAV")
    r.add_argument("--mnist", required=True, type=Path)
    r.add_argument("--fsdd", required=True, type=Path)
    r.add_argument("--pca-components", type=int, default=196)
    r.add_argument("--noise", choices=["pink", "white", "brown", "none"], default="pink",
                   help="coloured noise replacing ESC-50 (generated from --seed)")
    r.add_argument("--noise-weight", type=float, default=0.009)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--val-size", type=int, default=5000)
    r.add_argument("--val-split", choices=["speaker", "last_rows"], default="speaker",
                   help="speaker: validation audio from one held-out train speaker (default); "
                        "last_rows: the reference split")
    r.add_argument("--val-speaker", default=None)
    r.add_argument("--test-speaker", default="yweweler")
    r.add_argument("--train-size", type=int, default=None, help="use the first N MNIST train rows")
    r.add_argument("--test-size", type=int, default=None, help="use the first N MNIST test rows")
    r.add_argument("--keep-waveform", action="store_true", help="also store the mixed waveform (list<int16>)")
    common(r)

    f = kinds.add_parser("fastmri", help="fastMRI knee HDF5 + fastMRI+ annotations")
    f.add_argument("--source", required=True, type=Path)
    f.add_argument("--annotations", required=True, type=Path)
    f.add_argument("--file-list", required=True, type=Path)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--study-level", choices=["slice", "volume"], default="slice")
    f.add_argument("--keep-kspace", action="store_true")
    f.add_argument("--limit-volumes", type=int, default=None)
    common(f)

    e = kinds.add_parser("features", help="precomputed embedding vectors per modality")
    e.add_argument("--source", required=True, type=Path)
    e.add_argument("--modality", action="append", required=True, metavar="NAME=COLUMN")
    e.add_argument("--label-column", default="label")
    e.add_argument("--id-column", default=None)
    e.add_argument("--split-column", default=None)
    e.add_argument("--task", choices=["multiclass", "multilabel"], default="multiclass")
    e.add_argument("--classes", default=None, help="comma-separated class or label names")
    e.add_argument("--name", default="features")
    e.add_argument("--seed", type=int, default=0)
    common(e)

    b = kinds.add_parser("builtin", help="the built-in synthetic dataset")
    b.add_argument("--seed", type=int, default=0)
    common(b)

    v = sub.add_parser("validate", help="check a prepared dataset")
    v.add_argument("dir", type=Path)
    v.add_argument("--quick", action="store_true", help="footers and schema only")
    return p


def _run(args: argparse.Namespace) -> str:
    if args.command == "validate":
        from i2m2_ray.data.validate import validate_dataset

        m = validate_dataset(args.dir, deep=not args.quick)
        rows = ", ".join(f"{s} {spec.rows}" for s, spec in m.splits.items())
        return f"ok: {args.dir} ({m.name}, {m.task}, {len(m.modalities)} modalities; {rows})"
    progress = not args.quiet
    if args.kind == "avmnist":
        from i2m2_ray.data.multibench import prepare_avmnist

        out = prepare_avmnist(args.source, args.out, val_size=args.val_size, overwrite=args.overwrite,
                              progress=progress)
    elif args.kind == "avmnist-raw":
        from i2m2_ray.data.avmnist import AVMNISTRawConfig, prepare_avmnist_raw

        cfg = AVMNISTRawConfig(pca_components=args.pca_components, noise=args.noise, noise_weight=args.noise_weight,
                               seed=args.seed, val_size=args.val_size, val_split=args.val_split,
                               val_speaker=args.val_speaker, test_speaker=args.test_speaker,
                               train_limit=args.train_size, test_limit=args.test_size,
                               keep_waveform=args.keep_waveform)
        out = prepare_avmnist_raw(args.mnist, args.fsdd, args.out, cfg, overwrite=args.overwrite, progress=progress)
    elif args.kind == "fastmri":
        from i2m2_ray.data.fastmri import FastMRIConfig, prepare_fastmri

        cfg = FastMRIConfig(seed=args.seed, study_level=args.study_level, keep_kspace=args.keep_kspace,
                            limit_volumes=args.limit_volumes)
        out = prepare_fastmri(args.source, args.annotations, args.file_list, args.out, cfg,
                              overwrite=args.overwrite, progress=progress)
    elif args.kind == "features":
        from i2m2_ray.data.features import prepare_features
        from i2m2_ray.errors import DataError

        mods = {}
        for item in args.modality:
            name, sep, col = item.partition("=")
            if not sep or not name or not col:
                raise DataError(f"--modality {item!r}: expected NAME=COLUMN")
            mods[name] = col
        classes = args.classes.split(",") if args.classes else None
        out = prepare_features(args.source, args.out, mods, label_column=args.label_column, id_column=args.id_column,
                               split_column=args.split_column, task=args.task, classes=classes, seed=args.seed,
                               name=args.name, overwrite=args.overwrite)
    else:
        from i2m2_ray.data.synthetic import SyntheticConfig, generate

        out = generate(SyntheticConfig(seed=args.seed), args.out, overwrite=args.overwrite)
    return f"wrote {out}"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_cli(lambda: print(_run(args)), "interrupted: no half-written dataset is left; re-run the same command")


def entry() -> None:
    """The ``i2m2-data`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
