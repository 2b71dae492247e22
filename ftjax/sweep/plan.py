"""What a sweep runs: task variants x methods x a learning-rate grid x seeds, from one config.

A sweep config is an ml_collections file like an experiment's (`get_config()`, or
`get_config(arg)` for `file.py:arg`), with these keys:

  name              results are written as <results_dir>/<name>.{md,csv,json} and two PNGs
  methods           ftjax.peft.presets.METHODS names, in table order
  seeds             runs per method at the chosen learning rate (seed 0 is the search's run)
  lr_factors        the grid of a method without an explicit one: SUGGESTED_LEARNING_RATES[m]
                    times each factor (a task's own lr_factors win over these)
  learning_rates    {method: (lr, ...)}: explicit grids (a task's own win over these, and
                    any explicit grid over lr_factors)
  overrides         "key=value" training-config overrides for every run
  method_overrides  {method: ("key=value", ...)} for every task
  tasks             {name: {experiment, overrides, method_overrides, learning_rates,
                    lr_factors}}: each task variant is an experiment file (relative to the
                    sweep file) + overrides; lr_factors there suit a task whose batch or
                    model wants other rates than the sweep's other tasks
  workdir           the sweep directory, one run directory per run ("" -> workdirs/<name>)
  results_dir       where the tables and plots go, relative to the sweep file's directory
  keep_checkpoints  False deletes a run's checkpoints once its delta size is recorded
  isolate           each run in its own process (needed for per-run peak GPU memory)
  compilation_cache persistent XLA cache in <workdir>/jax_cache: seed runs reuse the
                    compiled steps of their search run
  extend_grid       n > 0: while the best rate of a (task, method) is the smallest or largest
                    searched, search one grid step beyond it (at most n times), so the chosen
                    rate is bracketed by rates that did worse
  baseline          True adds an "untrained" row per task: the model exactly as a run sets
                    it up (pretrained weights, the task head as initialized: a random new head,
                    or a verbalizer head that starts at the zero-shot answer), evaluated on
                    validation and test before any step; the reference every method moves from

Protocol per (task, method): seed 0 trains once per grid rate and is evaluated on validation
and test; the rate with the best validation accuracy is chosen (ftjax.sweep.select); seeds
1..seeds-1 train at that rate and are evaluated on test (and on validation only when their
training keeps its best checkpoint by it). The table reports test accuracy over the `seeds`
runs at the chosen rate.

Every run's training config is built and checked here (`ftjax.train.config.load_config`), so a typo
in any task, method or override fails before the first run starts.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import ml_collections

from ftjax.peft.presets import METHODS, SUGGESTED_LEARNING_RATES
from ftjax.settings import (
    ConfigError,
    closest_key,
    import_config_file,
    parse_override,
    split_config_arg,
)
from ftjax.train.config import base_config, load_config

SEARCH, SEED = "search", "seed"  # the two phases of the protocol
BASELINE = "baseline"  # the untrained row: evaluated, never trained
UNTRAINED = "untrained"  # its method name in records and tables


def sweep_schema() -> ml_collections.ConfigDict:
    """Every top-level key of a sweep config with its default (tasks are checked apart)."""
    c = ml_collections.ConfigDict()
    c.name = ""
    c.methods = ()
    c.seeds = 3
    c.lr_factors = (1 / 3, 1.0, 3.0)
    c.learning_rates = ml_collections.ConfigDict()
    c.overrides = ()
    c.method_overrides = ml_collections.ConfigDict()
    c.tasks = ml_collections.ConfigDict()
    c.workdir = ""
    c.results_dir = "results"
    c.keep_checkpoints = False
    c.isolate = False
    c.compilation_cache = True
    c.baseline = False
    c.extend_grid = 0
    return c


TASK_KEYS = {"experiment": "", "overrides": (), "method_overrides": {}, "learning_rates": {},
             "lr_factors": ()}


def is_sweep_config(cfg: ml_collections.ConfigDict) -> bool:
    """Whether a config file's ConfigDict is a sweep (tells it apart from an experiment)."""
    return "tasks" in cfg and "methods" in cfg


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One training run of the sweep: where its config comes from and which cell it fills."""

    task: str
    method: str  # a METHODS name, or UNTRAINED for the baseline
    lr: float  # 0.0 for the baseline
    seed: int
    phase: str  # SEARCH (seed 0, every grid rate), SEED (the chosen rate) or BASELINE
    experiment: str  # the experiment file
    overrides: tuple[str, ...]  # every --set override, in the order applied

    @property
    def run_id(self) -> str:
        return f"{self.task}/{self.method}/lr_{self.lr:.3g}/seed_{self.seed}"

    def config(self) -> ml_collections.ConfigDict:
        return load_config(self.experiment, self.overrides)

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "overrides": list(self.overrides),
                "run_id": self.run_id}

    @classmethod
    def from_json(cls, values: dict) -> "RunSpec":
        fields = {f.name for f in dataclasses.fields(cls)}
        spec = {k: v for k, v in values.items() if k in fields}
        return cls(**{**spec, "overrides": tuple(spec["overrides"])})


@dataclasses.dataclass(frozen=True)
class TaskVariant:
    name: str
    experiment: str
    overrides: tuple[str, ...]
    method_overrides: dict[str, tuple[str, ...]]
    learning_rates: dict[str, tuple[float, ...]]
    lr_factors: tuple[float, ...]  # () -> the sweep's


@dataclasses.dataclass(frozen=True)
class Sweep:
    name: str
    source: str  # the sweep config file (with its :arg)
    methods: tuple[str, ...]
    seeds: int
    tasks: tuple[TaskVariant, ...]
    grids: dict[tuple[str, str], tuple[float, ...]]  # (task, method) -> learning rates
    overrides: tuple[str, ...]
    method_overrides: dict[str, tuple[str, ...]]
    workdir: Path
    results_dir: Path
    keep_checkpoints: bool
    isolate: bool
    compilation_cache: bool
    baseline: bool = False
    extend_grid: int = 0  # searches past a grid's end while the best rate sits there

    def run_dir(self, spec: RunSpec) -> Path:
        return self.workdir / spec.run_id

    def _spec(self, task: TaskVariant, method: str, lr: float, seed: int,
              phase: str) -> RunSpec:
        # Later overrides win: sweep, task, method (sweep then task), then the cell itself and
        # its phase, which the protocol fixes: a search run is evaluated on validation (which
        # chooses the rate) and test; a seed run on test only, unless its training keeps the
        # best checkpoint by validation (best_metric), which then stays part of the procedure.
        overrides = (*self.overrides, *task.overrides, *self.method_overrides.get(method, ()),
                     *task.method_overrides.get(method, ()), f"method={method}",
                     f"optimizer.learning_rate={lr!r}", f"seed={seed}")
        validation = phase == SEARCH or bool(load_config(task.experiment, overrides).best_metric)
        evals = "eval_splits=('validation',)" if validation else "eval_splits=()"
        return RunSpec(task.name, method, lr, seed, phase, task.experiment, (*overrides, evals))

    def baseline_run(self, task: str) -> RunSpec | None:
        """The task's untrained evaluation (the experiment with the sweep's and the task's
        overrides, seed 0), or None when the sweep has no baseline."""
        if not self.baseline:
            return None
        t = self.task(task)
        return RunSpec(t.name, UNTRAINED, 0.0, 0, BASELINE, t.experiment,
                       (*self.overrides, *t.overrides, "seed=0"))

    def task(self, name: str) -> TaskVariant:
        return next(t for t in self.tasks if t.name == name)

    def search_run(self, task: str, method: str, lr: float) -> RunSpec:
        """Seed 0 at one rate (a grid's, or one past it: ftjax.sweep.runner.search_cell)."""
        return self._spec(self.task(task), method, lr, 0, SEARCH)

    def search_runs(self, task: str | None = None, method: str | None = None) -> list[RunSpec]:
        """Seed 0 at every rate of the grid, per task and method (or only the given ones)."""
        return [self._spec(t, m, lr, 0, SEARCH)
                for t in self.tasks if task in (None, t.name)
                for m in self.methods if method in (None, m)
                for lr in self.grids[t.name, m]]

    def seed_runs(self, task: str, method: str, lr: float) -> list[RunSpec]:
        """Seeds 1..seeds-1 at the chosen rate."""
        return [self._spec(self.task(task), method, lr, seed, SEED)
                for seed in range(1, self.seeds)]

    def num_runs(self) -> int:
        trained = sum(len(self.grids[t.name, m]) + self.seeds - 1
                      for t in self.tasks for m in self.methods)
        return trained + len(self.tasks) * self.baseline


def load_sweep(path: str, overrides: list[str] | tuple[str, ...] = (), *,
               check_runs: bool = True) -> Sweep:
    """Import a sweep config, apply `--set` overrides, check it; with `check_runs` also build
    every search run's training config (seed runs differ from them only in the seed)."""
    cfg = import_config_file(path)
    if not is_sweep_config(cfg):
        raise ConfigError(f"{path}: not a sweep config (needs `methods` and `tasks`); for one "
                          f"training run use `ftjax train`")
    _check_keys(cfg, path)
    with cfg.unlocked():
        for key, default in sweep_schema().items():  # keys a file leaves out get defaults
            if key not in cfg:
                cfg[key] = default
        for name in cfg.tasks.keys():
            task = cfg.tasks[name]
            with task.unlocked():
                for key, default in TASK_KEYS.items():
                    if key not in task:
                        is_map = isinstance(default, dict)
                        task[key] = ml_collections.ConfigDict() if is_map else default
    cfg = _apply_overrides(cfg, list(overrides), path)
    sweep = _build(cfg, path)
    if check_runs:
        baselines = [sweep.baseline_run(t.name) for t in sweep.tasks] if sweep.baseline else []
        for spec in [*baselines, *sweep.search_runs()]:
            try:
                spec.config()
            except ConfigError as err:
                raise ConfigError(f"{path}: run {spec.run_id}: {err}") from None
    return sweep


def _check_keys(cfg, where) -> None:
    schema = sweep_schema()
    unknown = [k for k in cfg.keys() if k not in schema]
    if unknown:
        raise ConfigError(f"{where}: unknown sweep key {unknown[0]!r}"
                          f"{closest_key(unknown[0], list(schema.keys()))}")
    for name in cfg.tasks.keys():
        task = cfg.tasks[name]
        if not isinstance(task, ml_collections.ConfigDict):
            raise ConfigError(f"{where}: tasks.{name} must be a ConfigDict with keys "
                              f"{sorted(TASK_KEYS)}")
        bad = [k for k in task.keys() if k not in TASK_KEYS]
        if bad:
            raise ConfigError(f"{where}: unknown key tasks.{name}.{bad[0]}"
                              f"{closest_key(bad[0], list(TASK_KEYS))}")


def _apply_overrides(cfg, overrides: list[str], where) -> ml_collections.ConfigDict:
    """`key=value` on the sweep config itself (e.g. seeds=2, tasks.minilm.overrides=(...)).

    A key must exist (else the closest one is named) and keep its type; new entries may be
    added to the per-method maps (learning_rates.<method>, method_overrides.<method>, and the
    same under a task) and a task's own keys.
    """
    for text in overrides:
        key, value = parse_override(text)
        *parents, leaf = key.split(".")
        node = cfg
        for part in parents:
            node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
        is_map = parents[-1:] in (["learning_rates"], ["method_overrides"])
        is_task = len(parents) == 2 and parents[0] == "tasks" and leaf in TASK_KEYS
        if not isinstance(node, ml_collections.ConfigDict) or (
                leaf not in node and not (is_map or is_task)):
            raise ConfigError(f"--set {text}: unknown sweep key {key!r}"
                              f"{closest_key(key, _flat_keys(cfg))}")
        old = node.get(leaf)
        if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(old, str) and not isinstance(value, str):
            value = str(value)
        if isinstance(value, list):
            value = tuple(value)
        if old is not None and type(value) is not type(old):
            raise ConfigError(f"--set {text}: {key!r} must be {type(old).__name__}, got "
                              f"{type(value).__name__} ({value!r})")
        with node.unlocked():
            node[leaf] = value
    return cfg


def _flat_keys(cfg, prefix="") -> list[str]:
    keys = []
    for key in cfg.keys():
        value = cfg[key]
        if isinstance(value, ml_collections.ConfigDict):
            keys += _flat_keys(value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


def _method_name(method: Any, where: str) -> str:
    if method not in METHODS:
        hint = closest_key(str(method), list(METHODS))
        raise ConfigError(f"{where}: unknown method {method!r}{hint} (known: "
                          f"{', '.join(METHODS)})")
    return method


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a tuple of 'key=value' strings, got {value!r}")
    return tuple(value)


def _grid(values: Any, where: str) -> tuple[float, ...]:
    if isinstance(values, (int, float)):
        values = (values,)
    grid = tuple(float(v) for v in values)
    if not grid:
        raise ConfigError(f"{where} is empty: a method needs at least one learning rate")
    if any(not lr > 0 for lr in grid):
        raise ConfigError(f"{where} has a learning rate <= 0: {grid}")
    names = [f"{lr:.3g}" for lr in grid]
    if len(set(names)) != len(names):  # run directories are named by 3 significant digits
        raise ConfigError(f"{where}: learning rates {grid} are not distinct to 3 digits")
    return grid


def _per_method(mapping, where: str, convert) -> dict:
    return {_method_name(m, f"{where}"): convert(mapping[m], f"{where}.{m}")
            for m in mapping.keys()}


def _build(cfg, path: str) -> Sweep:
    where = str(path)
    if not cfg.name:
        raise ConfigError(f"{where}: `name` is empty (it names the result files)")
    methods = tuple(_method_name(m, f"{where}: methods") for m in cfg.methods)
    if not methods:
        raise ConfigError(f"{where}: `methods` is empty")
    if len(set(methods)) != len(methods):
        raise ConfigError(f"{where}: `methods` lists a method twice: {methods}")
    if cfg.seeds < 1:
        raise ConfigError(f"{where}: `seeds` must be >= 1, got {cfg.seeds}")
    if cfg.extend_grid < 0:
        raise ConfigError(f"{where}: `extend_grid` must be >= 0, got {cfg.extend_grid}")
    if not list(cfg.tasks.keys()):
        raise ConfigError(f"{where}: `tasks` is empty")
    base = split_config_arg(path)[0].resolve().parent
    learning_rates = _per_method(cfg.learning_rates, f"{where}: learning_rates", _grid)
    tasks, grids = [], {}
    for name in cfg.tasks.keys():
        t, at = cfg.tasks[name], f"{where}: tasks.{name}"
        if "/" in name:
            raise ConfigError(f"{at}: a task name is a directory name; no '/'")
        if not t.get("experiment"):
            raise ConfigError(f"{at}.experiment is missing (an experiment file)")
        experiment = Path(t.experiment)
        experiment = experiment if experiment.is_absolute() else base / experiment
        task = TaskVariant(
            name=name, experiment=str(experiment),
            overrides=_strings(t.get("overrides", ()), f"{at}.overrides"),
            method_overrides=_per_method(t.get("method_overrides", {}),
                                         f"{at}.method_overrides", _strings),
            learning_rates=_per_method(t.get("learning_rates", {}), f"{at}.learning_rates",
                                       _grid),
            lr_factors=(_grid(t.lr_factors, f"{at}.lr_factors") if t.get("lr_factors")
                        else ()),
        )
        tasks.append(task)
        factors, source = ((task.lr_factors, f"{at}.lr_factors") if task.lr_factors
                           else (cfg.lr_factors, f"{where}: lr_factors"))
        for method in methods:
            grid = task.learning_rates.get(method) or learning_rates.get(method)
            if grid is None:
                if method not in SUGGESTED_LEARNING_RATES:
                    raise ConfigError(f"{where}: method {method!r} has no suggested learning "
                                      f"rate; give learning_rates.{method}")
                grid = _grid([SUGGESTED_LEARNING_RATES[method] * f for f in factors],
                             f"{source} x SUGGESTED_LEARNING_RATES[{method!r}]")
            grids[name, method] = grid
    workdir = Path(cfg.workdir or f"workdirs/{cfg.name}")
    results_dir = Path(cfg.results_dir)
    return Sweep(
        name=cfg.name, source=str(path), methods=methods, seeds=int(cfg.seeds),
        tasks=tuple(tasks), grids=grids,
        overrides=_strings(cfg.overrides, f"{where}: overrides"),
        method_overrides=_per_method(cfg.method_overrides, f"{where}: method_overrides",
                                     _strings),
        workdir=workdir, results_dir=results_dir if results_dir.is_absolute()
        else base / results_dir,
        keep_checkpoints=bool(cfg.keep_checkpoints), isolate=bool(cfg.isolate),
        compilation_cache=bool(cfg.compilation_cache), baseline=bool(cfg.baseline),
        extend_grid=int(cfg.extend_grid),
    )


def config_fingerprint(cfg: ml_collections.ConfigDict) -> str:
    """A run's resolved training config as canonical JSON: a finished run whose config differs
    from the planned one (an edited experiment file or override) is stale and runs again
    (`same_config`)."""
    return json.dumps(json.loads(json.dumps(cfg.to_dict(), default=str)), sort_keys=True)


def same_config(recorded: str | None, cfg: ml_collections.ConfigDict) -> bool:
    """Whether a finished run's recorded fingerprint is the training config planned now.

    A key the record lacks is the same when its planned value is the key's default: ftjax grew
    the key after the run (model.attention_impl, say), and a new key's default keeps what runs
    did before, so the run need not train again. Any other difference, a key removed since
    included, makes the run stale.
    """
    if recorded is None:
        return False
    defaults = json.loads(config_fingerprint(base_config()))
    return _same(json.loads(recorded), json.loads(config_fingerprint(cfg)), defaults)


def _same(then: Any, now: Any, defaults: Any) -> bool:
    if not (isinstance(then, dict) and isinstance(now, dict)):
        return then == now
    defaults = defaults if isinstance(defaults, dict) else {}
    if set(then) - set(now):
        return False
    for key, value in now.items():
        if key in then:
            if not _same(then[key], value, defaults.get(key)):
                return False
        elif key not in defaults or defaults[key] != value:
            return False
    return True
