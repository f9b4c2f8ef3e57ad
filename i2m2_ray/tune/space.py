"""Search spaces as data: dotted training-config paths mapped to distributions.

    search:
      optim.lr: {loguniform: [0.001, 0.1]}
      optim.momentum: {uniform: [0.0, 0.95]}
      model.hidden: {int: [16, 128], log: true}      # inclusive bounds
      model.lrtf_rank: {choice: [4, 8, 16]}

Every entry is checked against the ``TrainConfig`` schema before Ray starts: the path exists,
the experiment does not set it itself, the distribution fits the field's type, and each bound or
choice gives a valid training config. The old fixed schema (``lr: [a, b]``, ``weight_decay``,
``optimizer``, ``batch_size``) still loads, translated, so saved ``experiment.yaml`` files resume.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any

from i2m2_ray.errors import ConfigError

DISTRIBUTIONS = ("loguniform", "uniform", "int", "choice")
# Keys of the old fixed schema -> (dotted path, distribution kind).
OLD_KEYS = {"lr": ("optim.lr", "loguniform"), "weight_decay": ("optim.weight_decay", "loguniform"),
            "optimizer": ("optim.name", "choice"), "batch_size": ("optim.batch_size", "choice")}
# Set by the experiment for every trial; searching them would be overwritten or break the method.
EXPERIMENT_KEYS = ("variant", "run_dir", "dataset", "epochs", "seed", "init", "metric", "mode", "workers",
                   "cpus_per_worker", "gpus_per_worker", "threads", "gpu", "resume", "launcher")
# Table / HParams names of the two default paths (the names every earlier table used).
SHORT_NAMES = {"optim.lr": "lr", "optim.weight_decay": "weight_decay"}
# Keys of a trial's config that are not searched paths.
TRIAL_KEYS = ("base", "run", "seed", "variant")


def column_name(path: str) -> str:
    """Name of a searched path in the results table, the trial lines and TensorBoard's HParams."""
    return SHORT_NAMES.get(path, path)


def _is_distribution(value: Any) -> bool:
    return isinstance(value, dict) and any(k in value for k in DISTRIBUTIONS)


def normalize(raw: Any, where: str = "search") -> dict[str, Any]:
    """Flat ``{dotted.path: spec}`` from a nested or dotted mapping, old-form keys translated.

    ``search.optim.lr=...`` on the command line arrives nested; YAML files use dotted keys.
    A ``null`` value is kept (it removes the key when merged over another space).
    """
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of training-config paths to distributions, got {raw!r}")
    out: dict[str, Any] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            path = f"{prefix}{key}"
            if not prefix and key in OLD_KEYS and not _is_distribution(value):
                new_path, kind = OLD_KEYS[key]
                out[new_path] = None if value is None else {kind: value}
            elif value is None or _is_distribution(value):
                out[path] = value
            elif isinstance(value, dict):
                walk(value, f"{path}.")
            else:
                raise ConfigError(f"{where}.{path}: expected a distribution such as {{loguniform: [0.001, 0.1]}}, "
                                  f"{{uniform: [0.0, 0.9]}}, {{int: [16, 128]}} or {{choice: [a, b]}}, got {value!r}")

    walk(raw, "")
    return out


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` over ``base`` entry by entry; a ``null`` entry removes the path."""
    out = dict(base)
    for path, spec in extra.items():
        if spec is None:
            out.pop(path, None)
        else:
            out[path] = spec
    return {k: v for k, v in out.items() if v is not None}


def _unwrap_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def field_type(cls: type, path: str, where: str = "search") -> Any:
    """The annotation of ``path`` inside dataclass ``cls``; unknown paths fail listing the known keys."""
    node: Any = cls
    walked: list[str] = []
    for part in path.split("."):
        node = _unwrap_optional(node)
        if dataclasses.is_dataclass(node):
            hints = typing.get_type_hints(node)
            if part not in hints:
                owner = ".".join(walked) or "the training config"
                raise ConfigError(f"{where}.{path}: not a training-config key ({owner} has: "
                                  f"{', '.join(sorted(hints))})")
            node = hints[part]
        elif typing.get_origin(node) is dict:
            node = typing.get_args(node)[1]
        else:
            raise ConfigError(f"{where}.{path}: not a training-config key ({'.'.join(walked)} is a value, "
                              "not a section)")
        walked.append(part)
    return _unwrap_optional(node)


def _bounds(spec: dict[str, Any], kind: str, where: str) -> list[Any]:
    value = spec[kind]
    if kind == "choice":
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{where}: choice needs a non-empty list, got {value!r}")
        return value
    ok = isinstance(value, list) and len(value) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if kind == "int":
        ok = ok and all(isinstance(v, int) for v in value)
    if not ok or not value[0] < value[1]:
        raise ConfigError(f"{where}: {kind} needs [low, high] with low < high"
                          f"{' (integers)' if kind == 'int' else ''}, got {value!r}")
    if (kind == "loguniform" or (kind == "int" and spec.get("log"))) and not value[0] > 0:
        raise ConfigError(f"{where}: {'log ' if kind == 'int' else ''}{kind} needs low > 0, got {value!r}")
    return value


def spec_values(spec: dict[str, Any]) -> list[Any]:
    """The values worth trying of a checked spec: both bounds, or every choice."""
    kind = next(k for k in DISTRIBUTIONS if k in spec)
    return list(spec[kind])


def check_spec(path: str, spec: Any, schema: type, where: str) -> tuple[str, list[Any]]:
    """The spec's kind and the values to try (bounds or choices); errors are one line."""
    annotation = field_type(schema, path, where)
    where = f"{where}.{path}"
    if path.split(".")[0] in EXPERIMENT_KEYS:
        raise ConfigError(f"{where}: set by the experiment for every trial, not searchable")
    kinds = [k for k in DISTRIBUTIONS if k in spec]
    extra = set(spec) - set(DISTRIBUTIONS) - ({"log"} if kinds == ["int"] else set())
    if len(kinds) != 1 or extra:
        raise ConfigError(f"{where}: give exactly one of {', '.join(DISTRIBUTIONS)} (int may add log: true), "
                          f"got {spec!r}")
    kind = kinds[0]
    values = _bounds(spec, kind, where)
    if kind in ("loguniform", "uniform") and annotation is not float:
        raise ConfigError(f"{where}: {kind} draws real numbers but the key holds {_type_name(annotation)}; "
                          "use int or choice")
    if kind == "int" and annotation not in (int, float):
        raise ConfigError(f"{where}: int draws integers but the key holds {_type_name(annotation)}; use choice")
    return kind, values


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", str(annotation))


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """Set a dotted path inside nested dicts, creating the sections it crosses."""
    parts = path.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        node[part] = dict(child) if isinstance(child, dict) else {}
        node = node[part]
    node[parts[-1]] = value


def with_values(base: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of a resolved training-config dict with every searched path set."""
    out = copy.deepcopy(base)
    for path, value in values.items():
        set_path(out, path, value)
    return out


def validate_space(space: dict[str, Any], schema: type, build: Callable[[dict[str, Any]], Any], where: str) -> None:
    """Check every entry, then build a training config with each bound and choice (its own validation)."""
    for path, spec in space.items():
        _, values = check_spec(path, spec, schema, where)
        for value in values:
            try:
                build({path: value})
            except ConfigError as exc:
                raise ConfigError(f"{where}.{path}: {value!r} gives an invalid training config ({exc})") from None


def tune_domain(spec: dict[str, Any]):
    """The Ray Tune domain of a spec (OptunaSearch turns it into the Optuna distribution)."""
    from ray import tune

    if "loguniform" in spec:
        return tune.loguniform(*spec["loguniform"])
    if "uniform" in spec:
        return tune.uniform(*spec["uniform"])
    if "int" in spec:
        low, high = spec["int"]
        return tune.lograndint(low, high + 1) if spec.get("log") else tune.randint(low, high + 1)
    return tune.choice(list(spec["choice"]))


def searched_values(config: dict[str, Any]) -> dict[str, Any]:
    """The searched paths of a trial's config (final runs carry theirs in ``config["run"]``)."""
    merged = {**config, **config.get("run", {})}
    # a Tune run an earlier version started (and this one restores) names the fixed schema's keys
    return {OLD_KEYS[k][0] if k in OLD_KEYS else k: v for k, v in merged.items() if k not in TRIAL_KEYS}
