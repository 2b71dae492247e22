"""A pipeline of runs, each starting from an earlier one's final weights, as one command.

A pipeline file is an experiment file that also defines `get_stages()`, the stages in order:

    def get_stages():
        return [Stage("dapt", "dapt"),                                  # get_config("dapt")
                Stage("polarity", "polarity", init_from="dapt", group="two-stage"),
                Stage("alone", "polarity", group="polarity only")]

`run_stages(FILE, ROOT)` trains each stage in ROOT/<name> (its workdir kept; a finished one,
with results.json, is not run again; an interrupted one stops the pipeline, and the next call
resumes it; the summary of an interrupted pipeline holds the stages finished so far and names
the others), setting the stage's
`init_from` to the workdir of the earlier stage it names, and calling the file's function that
the stage's `before` names first (a step that is not a run). The summary holds every stage's
result splits, run facts (trainable parameters, wall time, adapter sizes) and logged
evaluations (its learning curve) and, per group,
the mean and standard deviation of each metric over the group's stages (seeds of one arm).
A file that also defines `report(record, stem)` is given the pipeline's record after
`--record` and may write its tables and plots next to it (stem: the record's path without
".json").
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Sequence
from pathlib import Path

from ftjax.settings import ConfigError, import_experiment_file
from ftjax.train.config import load_config
from ftjax.train.loop import train


# What the summary keeps of each stage's results.json besides its metrics.
RUN_FACTS = ("trainable", "total", "wall_s", "adapter", "final_step", "best_step",
             "step_time_s")


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str  # its workdir under the pipeline's root
    config: str  # the argument of the file's get_config()
    # --set style, e.g. ("seed=1",); "{root}" stands for the pipeline's root directory (an
    # earlier stage's outputs: "compose.adapters=('a={root}/adapters/adapters/a',)")
    overrides: tuple[str, ...] = ()
    init_from: str | None = None  # an earlier stage's name
    group: str | None = None  # stages summarized together (an arm's seeds)
    # A function of the pipeline file, called as fn(root) before the stage trains (not once it
    # has finished): what the stage reads that no run writes, e.g. a teacher cache made from an
    # earlier stage. Called again after an interruption, so it must continue or redo its work.
    before: str | None = None


def load_stages(path: str | Path) -> list[Stage]:
    """The file's stages, checked: unique names, init_from naming an earlier stage."""
    path = Path(path)
    module = import_experiment_file(path)
    if not hasattr(module, "get_stages"):
        raise ConfigError(f"{path}: defines no get_stages(), so it is not a pipeline")
    stages = list(module.get_stages())
    seen: set[str] = set()
    for stage in stages:
        if not isinstance(stage, Stage):
            raise ConfigError(f"{path}: get_stages() gave {stage!r}, not a Stage")
        if stage.before is not None and not callable(getattr(module, stage.before, None)):
            raise ConfigError(f"{path}: stage {stage.name!r} runs {stage.before}() first, "
                              f"which the file does not define")
        if stage.name in seen:
            raise ConfigError(f"{path}: two stages are named {stage.name!r}")
        if stage.init_from is not None and stage.init_from not in seen:
            raise ConfigError(f"{path}: stage {stage.name!r} starts from {stage.init_from!r}, "
                              f"which is not an earlier stage")
        seen.add(stage.name)
    return stages


def stage_config(path: str | Path, stage: Stage, root: Path, overrides: Sequence[str] = ()):
    """The stage's config: the file's get_config(stage.config), the stage's overrides, its
    init_from (the earlier stage's workdir), then the command line's overrides."""
    init = [f"init_from={root / stage.init_from}"] if stage.init_from else []
    own = [o.replace("{root}", str(root)) for o in stage.overrides]
    return load_config(f"{path}:{stage.config}", [*own, *init, *overrides])


def set_aside(workdir: Path) -> Path:
    """Move a stage's workdir to a free `<name>.before-restart-<n>` beside it (nothing is
    deleted); returns the new place."""
    n = 1
    while (target := workdir.with_name(f"{workdir.name}.before-restart-{n}")).exists():
        n += 1
    workdir.rename(target)
    return target


def run_stages(path: str | Path, root: str | Path, *, overrides: Sequence[str] = (),
               quiet: bool = False, only: Sequence[str] = (),
               restart: Sequence[str] = ()) -> dict:
    """Train every stage not finished yet; return the summary (see the module docstring).

    only: train just these stages (each stage it starts from must have finished); the summary
    still holds every finished stage. restart: stages to train again from their start (their
    old workdirs moved aside, never deleted); they are trained even if `only` leaves them out.
    Stages that started from a restarted one are not retrained: restart them too.
    """
    root = Path(root)
    stages = load_stages(path)
    names = [s.name for s in stages]
    unknown = sorted((set(only) | set(restart)) - set(names))
    if unknown:
        raise ConfigError(f"{path}: no stage named {unknown[0]!r}; the stages are {names}")
    # Every stage's config is checked before the first one trains.
    configs = {s.name: stage_config(path, s, root, overrides) for s in stages}
    results, wall, steps, runs, evaluations = {}, 0.0, {}, {}, {}
    interrupted = None
    module = import_experiment_file(Path(path))
    chosen = set(only) | set(restart)
    for stage in stages:
        workdir = root / stage.name
        done = workdir / "results.json"
        if stage.name in restart and workdir.exists():
            set_aside(workdir)
        if not done.is_file():
            if chosen and stage.name not in chosen:
                continue
            if stage.init_from is not None and not (root / stage.init_from /
                                                    "results.json").is_file():
                raise ConfigError(f"stage {stage.name!r} starts from {stage.init_from!r}, "
                                  f"which has not finished: train it first")
            if stage.before is not None:
                getattr(module, stage.before)(root)
            if train(configs[stage.name], workdir, quiet=quiet).interrupted:
                interrupted = stage.name
                break
        finished = json.loads(done.read_text())
        results[stage.name] = finished["eval"]
        steps[stage.name] = finished["final_step"]
        wall += float(finished.get("wall_s", 0.0))
        runs[stage.name] = {key: finished.get(key) for key in RUN_FACTS}
        evaluations[stage.name] = logged_evaluations(workdir)
    summary = {"stages": results, "groups": group_summary(
                   [s for s in stages if s.name in results], results),
               "steps": steps, "runs": runs, "evaluations": evaluations,
               "seeds": sorted({int(configs[n].seed) for n in results}),
               "wall_time_s": round(wall, 1)}
    if interrupted is not None:  # what the finished stages measured is kept
        summary["interrupted"] = interrupted
    if len(results) < len(stages):
        summary["not_finished"] = [s.name for s in stages if s.name not in results]
    return summary


def logged_evaluations(workdir: Path) -> list[dict]:
    """Every evaluation a run logged (metrics.jsonl rows with a split: step, split, metrics),
    in order: a stage's learning curve."""
    path = workdir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return [row for row in rows if "split" in row]


def write_report(path: str | Path, record: dict, stem: Path) -> list[Path]:
    """The files the pipeline file's `report(record, stem)` writes (none without one)."""
    report = getattr(import_experiment_file(Path(path)), "report", None)
    return [] if report is None else [Path(p) for p in report(record, stem)]


def mean_std(values) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the values that are not None (0 for one value;
    (None, None) for none): what a pipeline's tables show per arm."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def group_summary(stages: Sequence[Stage], results: dict) -> dict:
    """{group: {split/metric: {"mean", "std", "n"}}} over the group's stages."""
    groups: dict[str, list[str]] = {}
    for stage in stages:
        if stage.group is not None:
            groups.setdefault(stage.group, []).append(stage.name)
    out = {}
    for group, names in groups.items():
        flat = [{f"{split}/{k}": v for split, values in results[n].items()
                 for k, v in values.items()} for n in names]
        keys = [k for k in flat[0] if all(k in f for f in flat)]
        out[group] = {k: dict(zip(("mean", "std"), mean_std(f[k] for f in flat)),
                              n=len(flat)) for k in keys}
    return out
