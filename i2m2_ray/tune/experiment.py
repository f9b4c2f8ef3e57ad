"""Experiment files (``search_spaces/*.yaml``): what to compare, how to search, what to spend.

Validated completely before Ray starts: unknown keys, bad ranges and unknown variants
fail with one line naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from i2m2_ray.config import deep_merge, from_dict, load_yaml, parse_overrides, to_dict
from i2m2_ray.data.format import Manifest
from i2m2_ray.errors import ConfigError
from i2m2_ray.models.builder import check_buildable, parse_variant
from i2m2_ray.resources import search_spaces_dir
from i2m2_ray.train.config import METRICS, DatasetConfig, TrainConfig
from i2m2_ray.tune.space import merge as merge_space
from i2m2_ray.tune.space import normalize, spec_values, validate_space, with_values

DEFAULT_EXPERIMENT = search_spaces_dir() / "default.yaml"
STAGE1_FAMILIES = ("unimodal", "inter")
MINIMISED = ("loss", "ece")
DEFAULT_SPACE = {"optim.lr": {"loguniform": [1e-3, 1e-1]}, "optim.weight_decay": {"loguniform": [1e-5, 1e-2]}}


@dataclass
class BudgetConfig:
    trials: int = 4  # per variant
    max_epochs: int = 8
    grace_period: int = 2  # ASHA: epochs before a trial can be stopped
    reduction_factor: int = 2
    concurrency: int | None = None  # trials at once; None = as many as the CPUs, GPUs and memory allow

    def validate(self, where: str = "budget") -> None:
        if self.trials < 1 or self.max_epochs < 1:
            raise ConfigError(f"{where}: trials and max_epochs must be >= 1")
        if not 1 <= self.grace_period <= self.max_epochs:
            raise ConfigError(f"{where}.grace_period: must be in [1, max_epochs={self.max_epochs}], "
                              f"got {self.grace_period}")
        if self.reduction_factor < 2:
            raise ConfigError(f"{where}.reduction_factor: must be >= 2, got {self.reduction_factor}")
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigError(f"{where}.concurrency: must be >= 1 or null, got {self.concurrency}")


@dataclass
class ResourcesConfig:
    cpus_per_trial: float = 1.0  # per in-process trial (its torch threads), or per Train worker
    workers: int = 1  # Ray Train workers per trial; 1 runs in-process (no worker-group start-up)
    gpus_per_worker: float = 0.0
    # GiB a trial reserves (Ray's memory resource); null = estimated from the dataset and the model
    memory_per_trial: float | None = None
    # fail at once if no node can ever place a trial; false on autoscaling clusters (nodes come on demand)
    check_placement: bool = True

    def validate(self, where: str = "resources") -> None:
        if self.cpus_per_trial <= 0 or self.workers < 1 or self.gpus_per_worker < 0:
            raise ConfigError(f"{where}: cpus_per_trial > 0, workers >= 1 and gpus_per_worker >= 0 required")
        if self.gpus_per_worker > 1 and self.gpus_per_worker != int(self.gpus_per_worker):
            raise ConfigError(f"{where}.gpus_per_worker: a share of one GPU (0.25: four trials per GPU) or whole "
                              f"GPUs, got {self.gpus_per_worker:g}")
        if self.memory_per_trial is not None and self.memory_per_trial <= 0:
            raise ConfigError(f"{where}.memory_per_trial: must be > 0 (GiB) or null, got {self.memory_per_trial}")
        if self.memory_per_trial is not None and self.workers > 1:
            raise ConfigError(f"{where}.memory_per_trial: applies to in-process trials (workers=1); Ray Train "
                              "workers reserve their own estimate")


@dataclass
class Stage2Config:
    from_scratch: bool = False  # intra / I2M2 without stage-1 initialisation (the paper's ablation)


@dataclass
class FinalConfig:
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    # false: seed s of intra / I2M2 starts from the seed-s stage-1 final models (the spread covers the
    # whole chain); true: every seed from the best search trials, which isolates the variance of the
    # stage-2 training itself (data order, its own seed) from the stage-1 variance.
    shared_init: bool = False

    def validate(self, where: str = "final") -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"{where}.seeds: need at least one seed, all distinct, got {self.seeds}")


@dataclass
class ExperimentConfig:
    name: str = "default"
    output_dir: str = field(default="runs/default", metadata={"path": True})
    seed: int = 0  # seeds the Optuna sampler; trial seeds come from train.seed and final.seeds
    variants: list[str] = field(default_factory=lambda: [
        "unimodal:image", "unimodal:audio", "inter:lf", "inter:lrtf", "intra", "i2m2:lf", "i2m2:lrtf"])
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig keys shared by every trial
    # dotted TrainConfig path -> distribution (see space.py); per-variant entries merge over it
    search: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SPACE))
    search_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # a null entry removes the path
    # Optuna storage of the studies (written as search.storage): a journal file, or an RDB URL; null: in memory
    search_storage: str | None = None
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    final: FinalConfig = field(default_factory=FinalConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    metric: str = "accuracy"
    mode: str | None = None  # null: from the metric (max for accuracy-like metrics, min for loss and ece)

    def validate(self, where: str = "") -> None:
        if not self.variants:
            raise ConfigError("variants: list at least one variant")
        if len(set(self.variants)) != len(self.variants):
            raise ConfigError(f"variants: duplicates in {self.variants}")
        for key in ("variant", "run_dir", "dataset", "epochs", "seed", "init", "metric", "mode", "workers",
                    "cpus_per_worker", "gpus_per_worker", "threads"):
            if key in self.train:
                raise ConfigError(f"train.{key}: set by the experiment (use the top-level key or budget)")
        self._resolve_mode()
        for name in self.search_overrides:
            if name not in self.variants:
                raise ConfigError(f"search_overrides.{name}: not one of the experiment's variants")
        if self.search_storage is not None:
            self.search_storage = check_storage(self.search_storage)
        base = self.trial_base(self.variants[0], {})  # unknown or invalid train.* keys fail here, before Ray starts

        def build(values: dict[str, Any]) -> TrainConfig:
            return from_dict(TrainConfig, with_values(base, values))

        validate_space(self.search, TrainConfig, build, "search")
        for name, extra in self.search_overrides.items():
            validate_space({k: v for k, v in extra.items() if v is not None}, TrainConfig, build,
                           f"search_overrides.{name}")

    def _resolve_mode(self) -> None:
        if self.metric not in METRICS:
            raise ConfigError(f"metric: unknown metric {self.metric!r} ({', '.join(METRICS)})")
        natural = "min" if self.metric in MINIMISED else "max"
        if self.mode is None:
            self.mode = natural
        elif self.mode != natural:
            raise ConfigError(f"mode: {self.mode!r} contradicts metric {self.metric!r} (a better {self.metric} is "
                              f"{'lower' if natural == 'min' else 'higher'}): set mode: {natural} or leave it out")

    def space_for(self, variant: str) -> dict[str, Any]:
        """The variant's search space: ``search`` with its ``search_overrides`` entry merged over it."""
        return merge_space(self.search, self.search_overrides.get(variant, {}))

    def searched_paths(self) -> list[str]:
        """Every path searched for some variant, in the order the experiment lists them."""
        paths = list(self.search)
        for variant in self.variants:
            paths += [p for p in self.space_for(variant) if p not in paths]
        return paths

    def base_train_config(self, **extra: Any) -> TrainConfig:
        data = deep_merge(self.train, {"dataset": to_dict(self.dataset), "epochs": self.budget.max_epochs,
                                       "metric": self.metric, "mode": self.mode, **extra})
        return from_dict(TrainConfig, data)

    def trial_base(self, variant: str, init: dict[str, str]) -> dict[str, Any]:
        """The resolved training config every trial of ``variant`` starts from (searched values go on top)."""
        r = self.resources
        return to_dict(self.base_train_config(
            variant=variant, init=init, threads=max(1, int(r.cpus_per_trial)), workers=r.workers,
            cpus_per_worker=r.cpus_per_trial, gpus_per_worker=r.gpus_per_worker,
            gpu="auto" if r.gpus_per_worker > 0 else "false"))

    def stage1_variants(self) -> list[str]:
        return [v for v in self.variants if v.split(":")[0] in STAGE1_FAMILIES]

    def stage2_variants(self) -> list[str]:
        return [v for v in self.variants if v.split(":")[0] not in STAGE1_FAMILIES]


def check_variants(exp: ExperimentConfig, manifest: Manifest, modalities: list[str]) -> None:
    """Variant names against the dataset, each model buildable for it, and stage-2 variants against
    what stage 1 provides: all before Ray starts."""
    for name in exp.variants:
        parse_variant(name, modalities)
    for name in exp.variants:
        _check_buildable(manifest, name, exp.base_train_config().model)
        for path, spec in exp.space_for(name).items():  # searched model keys: each bound / choice too
            if path.startswith("model."):
                for value in spec_values(spec):
                    cfg = from_dict(TrainConfig, with_values(exp.trial_base(name, {}), {path: value}))
                    _check_buildable(manifest, name, cfg.model, f"search {path}={value!r}: ")
    if exp.stage2.from_scratch:
        return
    for name in exp.stage2_variants():
        _check_same_model(exp, name, modalities)
        family, _, fusion = name.partition(":")
        needed = [f"unimodal:{m}" for m in modalities] + ([f"inter:{fusion}"] if family == "i2m2" else [])
        missing = [n for n in needed if n not in exp.variants]
        if missing:
            raise ConfigError(f"variant {name!r} is initialised from {', '.join(missing)}: add it to variants "
                              "or set stage2.from_scratch=true")


def _check_same_model(exp: ExperimentConfig, variant: str, modalities: list[str]) -> None:
    """A stage-2 model loads its experts' stage-1 weights: their model keys must not be searched."""
    from i2m2_ray.models.builder import stage1_variants

    sources = [s for s in stage1_variants(variant, modalities).values() if s in exp.variants]
    for name in [variant, *sources]:
        searched = [p for p in exp.space_for(name) if p.startswith("model.")]
        if searched:
            where = "search" if searched[0] in exp.search else f"search_overrides.{name}"
            raise ConfigError(f"{where}.{searched[0]}: {variant} starts from the stage-1 weights of "
                              f"{', '.join(sources)}, so their model keys cannot be searched "
                              "(set stage2.from_scratch=true to search them)")


def _check_buildable(manifest: Manifest, variant: str, model_cfg: Any, where: str = "") -> None:
    """Build the model without allocating it (meta device); a shape the dataset cannot feed fails here."""
    try:
        check_buildable(manifest, variant, model_cfg)
    except ConfigError as exc:
        raise ConfigError(f"{where}{exc}") from None


def check_storage(spec: Any) -> str:
    """``search.storage`` checked before Ray starts: an RDB URL SQLAlchemy can open (its driver installed),
    or a journal file whose directory exists (made absolute: trials and later runs find the same file)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"search.storage: expected a journal file path or an RDB URL (sqlite:///studies.db), "
                          f"got {spec!r}")
    if "://" in spec:
        try:
            from sqlalchemy.engine import make_url

            url = make_url(spec)
            url.get_dialect().import_dbapi()
        except Exception as exc:  # noqa: BLE001 - any reason the URL cannot be opened is the user's to fix
            raise ConfigError(f"search.storage: {spec}: not an RDB URL this installation can open "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
        if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).parent.is_dir():
            raise ConfigError(f"search.storage: {Path(url.database).parent} does not exist (the SQLite file's "
                              "directory)")
        return spec
    path = Path(spec).expanduser().resolve()
    if not path.parent.is_dir():
        raise ConfigError(f"search.storage: {path.parent} does not exist (the journal file's directory)")
    if path.is_dir():
        raise ConfigError(f"search.storage: {path} is a directory; give a journal file path")
    return str(path)


def upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """Earlier versions' forms in the current one: the fixed search schema (``search.lr: [a, b]``) and
    ``final.from_scratch`` (it controls stage 2). Applied to files, overrides and saved experiments alike."""
    data = dict(data)
    if isinstance(data.get("search"), dict) and "storage" in data["search"]:
        search = dict(data["search"])
        data["search_storage"] = search.pop("storage")
        if search:
            data["search"] = search
        else:
            del data["search"]  # only the storage was given: the default space
    if "search" in data:
        data["search"] = normalize(data["search"], "search")
    if isinstance(data.get("search_overrides"), dict):
        data["search_overrides"] = {name: normalize(space, f"search_overrides.{name}")
                                    for name, space in data["search_overrides"].items()}
    final = data.get("final")
    if isinstance(final, dict) and "from_scratch" in final:
        final = dict(final)
        stage2 = dict(data.get("stage2") or {})
        stage2.setdefault("from_scratch", final.pop("from_scratch"))
        data["final"], data["stage2"] = final, stage2
    return data


def merge_experiment(data: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` over ``data`` (both upgraded): sections merge, search entries replace whole."""
    out = deep_merge({k: v for k, v in data.items() if k not in ("search", "search_overrides")},
                     {k: v for k, v in extra.items() if k not in ("search", "search_overrides")})
    if "search" in data or "search" in extra:
        out["search"] = merge_space(data.get("search", DEFAULT_SPACE), extra.get("search", {}))
    names = [*data.get("search_overrides", {}), *extra.get("search_overrides", {})]
    if names:
        out["search_overrides"] = {n: {**data.get("search_overrides", {}).get(n, {}),
                                       **extra.get("search_overrides", {}).get(n, {})} for n in dict.fromkeys(names)}
    return out


def experiment_from_dict(data: dict[str, Any]) -> ExperimentConfig:
    """An experiment from a mapping in any form this project ever wrote, validated."""
    data = upgrade(data)
    if "search" in data:
        data["search"] = merge_space({}, data["search"])  # old files wrote unused choices as null
    return from_dict(ExperimentConfig, data)


def load_experiment(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """An experiment file (default ``search_spaces/default.yaml``) with ``key=value`` overrides, validated."""
    data = upgrade(load_yaml(path or DEFAULT_EXPERIMENT))
    return from_dict(ExperimentConfig, merge_experiment(data, upgrade(parse_overrides(overrides or []))))
