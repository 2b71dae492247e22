"""An experiment's record: what a finished run measured, beside the experiment file.

`ftjax train experiments/NAME.py --workdir W --record` writes experiments/results/NAME.json
(`NAME_FN.json` for `NAME.py:FN`): every result split's metrics (and those of the evaluation
before any step, with eval_at_start), the command that produced them, the seed, the steps, the
wall time and the machine. README tables quote these files, so a
figure in the README always has the run that measured it.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Sequence
from pathlib import Path

from ftjax.utils.jsonio import write_json
from ftjax.utils.machine import device_description


def record_path(experiment: str) -> Path:
    """experiments/NAME.py[:FN] -> experiments/results/NAME[_FN].json."""
    file, _, function = experiment.partition(":")
    path = Path(file)
    stem = path.stem if not function or function == "get_config" else f"{path.stem}_{function}"
    return path.parent / "results" / f"{stem}.json"


def workdir_of(argv: Sequence[str]) -> str | None:
    """The --workdir argument of a command line, if it has one."""
    for i, token in enumerate(argv):
        if token == "--workdir" and i + 1 < len(argv):
            return argv[i + 1]
        if token.startswith("--workdir="):
            return token.split("=", 1)[1]
    return None


def portable(value, root: str | None):
    """`value` with the paths under the run's workdir `root` written relative to it, as
    WORKDIR/...: a record names no directory of the machine that made it."""
    if root is None:
        return value
    if isinstance(value, dict):
        return {k: portable(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v, root) for v in value]
    if isinstance(value, str):
        base = str(Path(root))
        absolute = str(Path(root).resolve())
        for prefix in dict.fromkeys((absolute, base)):
            if value == prefix:
                return "WORKDIR"
            if value.startswith(prefix + "/"):
                return "WORKDIR/" + value[len(prefix) + 1:]
            value = value.replace("=" + prefix + "/", "=WORKDIR/")
    return value


def portable_command(argv: Sequence[str]) -> str:
    """The command line with its workdir (and paths under it) as WORKDIR."""
    root = workdir_of(argv)
    return shlex.join(portable(list(argv), root))


def write_record(experiment: str, result, cfg, argv: Sequence[str]) -> Path:
    """Write the record of `result` (a RunResult of `cfg`) and return its path."""
    path = record_path(experiment)
    path.parent.mkdir(parents=True, exist_ok=True)
    metrics = {f"{split}/{name}": value for split, values in result.eval.items()
               for name, value in values.items()}
    write_json(path, {
        "experiment": experiment,
        "metrics": metrics,
        # Before any training (eval_at_start): zero-shot, or the model before adaptation.
        "metrics_at_start": metrics_at_step(Path(result.workdir), 0),
        "command": portable_command(argv),
        "seeds": [int(cfg.seed)],
        "steps": int(result.final_step),
        "best_step": result.best_step,
        "stopped_early": bool(result.stopped_early),
        "wall_time_s": round(float(result.wall_s), 1),
        "train_tokens_per_s": round(float(result.train_tokens_per_s), 1),
        "machine": device_description(),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    })
    return path


def metrics_at_step(workdir: Path, step: int) -> dict:
    """{"split/metric": value} of the evaluation a run logged at `step` (metrics.jsonl); empty
    when it logged none then."""
    path = workdir / "metrics.jsonl"
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if "split" in row and row.get("step") == step:
            out.update({f"{row['split']}/{k}": v for k, v in row.items()
                        if k not in ("split", "step")})
    return out


def write_pipeline_record(experiment: str, summary: dict, argv: Sequence[str]) -> Path:
    """The record of a pipeline (ftjax.train.stages.run_stages): each stage's metrics and each
    group's mean and standard deviation."""
    path = record_path(experiment)
    path.parent.mkdir(parents=True, exist_ok=True)
    metrics = {f"{stage}/{split}/{name}": value
               for stage, splits in summary["stages"].items()
               for split, values in splits.items() for name, value in values.items()}
    write_json(path, {
        "experiment": experiment,
        "groups": summary["groups"],
        "metrics": metrics,
        "runs": portable(summary.get("runs", {}), workdir_of(argv)),
        "evaluations": summary.get("evaluations", {}),
        "command": portable_command(argv),
        "seeds": summary["seeds"],
        "steps": summary["steps"],
        "wall_time_s": summary["wall_time_s"],
        **({"not_finished": summary["not_finished"]} if "not_finished" in summary else {}),
        "machine": device_description(),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    })
    return path
