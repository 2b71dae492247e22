"""What users feel, end to end: `ftjax train` against an HF Trainer script on the same data.

    python -m benchmarks.race startup       # launch -> first finished step: ftjax cold / warm cache, HF
    python -m benchmarks.race accuracy      # every race of benchmarks/races.py
    python -m benchmarks.race accuracy --races ner_full clm_lora
    python -m benchmarks.race accuracy --smoke   # a few steps of each: checks the scripts

The races (benchmarks/races.py): MiniLM on polarity (full and LoRA), MiniLM NER on WNUT-16
tweets, SmolLM2 LoRA on packed causal-LM text. In each, both sides start from the same weights,
read the same data (jsonl files the race writes from ftjax's split), build the same model
(polarity: BERT's pooler + dropout 0.1 + a linear classifier, BertForSequenceClassification;
NER: dropout 0.1 + a linear tagger, first sub-token of each word tagged,
BertForTokenClassification; SmolLM2: LoRA r 8 / alpha 16 on q_proj and v_proj) and train with
the same recipe: AdamW (weight decay 0.01, eps 1e-8), linear warm-up, the race's decay,
gradient clipping 1.0, batch size, learning rate, steps and evaluation cadence; rows grouped by
length and padded per batch (HF: dynamic padding + train_sampling_strategy="group_by_length";
ftjax: `data.group_by_length` + `data.buckets`); the causal-LM text is packed into full rows on
both sides (ftjax: whole documents, attention kept within each; HF: the documents concatenated
with EOS and cut into blocks, as transformers' run_clm does). The final weights are tested.

Each run is one process, timed from outside: the runner starts it and polls the files it writes
(ftjax: WORKDIR/metrics.jsonl; HF: OUT/events.jsonl from a callback), stamping each new row with
the seconds since launch. So every time includes imports, data loading and tokenization, model
loading and compilation. Runs go one after another, never side by side.

startup: launch to the first finished optimizer step of the polarity_full race (log_every=1),
median of --repeats: ftjax with an empty compilation cache (cold), ftjax again on the cache a
previous run filled (warm: jax's persistent cache, what a second `ftjax train` of an experiment
gets), and the HF script. One untimed run of each first, so imports come from the page cache.
accuracy: per race, wall seconds to the first validation figure that reaches the race's target
(fixed before measuring; relative targets from each side's own step-0 evaluation), total wall
seconds, examples/s and real (non-padding) tokens/s over the whole run, and the test figure of
the final weights.
Results: benchmarks/results/race-<part>-<date>.json with the CPU model.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.races import GROUP_WINDOW, RACES, Race
from benchmarks.specs import cpu_model

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
POLL_S = 0.02


def ftjax_command(race: Race, workdir: Path, data: Path, steps: int, eval_every: int,
                  log_every: int) -> list[str]:
    sets = {"batch_size": race.batch_size, "task.max_length": race.max_length,
            "optimizer.learning_rate": race.lr, "optimizer.warmup_steps": race.warmup,
            "steps": steps, "eval_every": eval_every,
            "log_every": log_every, "checkpoint_every": steps, "best_metric": "",
            "data.group_by_length": GROUP_WINDOW,
            **{key: value.format(data=data) if isinstance(value, str) else value
               for key, value in race.ftjax_sets.items()}}
    command = [str(Path(sys.executable).with_name("ftjax")), "train", str(race.experiment),
               "--workdir", str(workdir), "--quiet"]
    for key, value in sets.items():
        command += ["--set", f"{key}={value}"]
    return command


def hf_model_dir(race: Race, scratch: Path) -> Path:
    """The HF checkpoint the HF side loads: the asset's own directory where it is one (MiniLM);
    a single-file asset (SmolLM2's GGUF) written once in fp32 by ftjax.io.save_hf, the weights
    ftjax starts from."""
    from ftjax import assets
    from ftjax.io import load_pretrained, save_hf

    if assets.resolve(race.model).is_dir():  # already an HF checkpoint directory
        return assets.resolve(race.model)
    target = scratch / f"hf-{race.model}"
    if not target.exists():
        base = load_pretrained(race.model, dtype="float32")
        save_hf(base.model, base.params, target, tokenizer=base.tokenizer)
    return target


def hf_command(race: Race, model: Path, out: Path, data: Path, steps: int,
               eval_every: int) -> list[str]:
    return [sys.executable, "-m", race.hf_script,
            "--model", str(model), "--data", str(data), "--out", str(out),
            "--steps", str(steps), "--eval-every", str(eval_every), "--lr", str(race.lr),
            "--warmup", str(race.warmup), "--max-length", str(race.max_length),
            "--batch-size", str(race.batch_size), *race.hf_args]


def ftjax_events(workdir: Path, metric: str = "accuracy") -> list[dict]:
    """metrics.jsonl rows as events: first_step (train row of step 1), eval (validation), test
    (the final row's test figure)."""
    events = []
    for row in _rows(workdir / "metrics.jsonl"):
        if "split" not in row and row.get("step") == 1:
            events.append({"event": "first_step", "step": 1})
        elif row.get("split") == "validation":
            events.append({"event": "eval", "step": row["step"], metric: row[metric]})
        elif row.get("split") == "final":  # the run's reported figures (FinalReport)
            events.append({"event": "test", "step": row["step"],
                           metric: row[f"test_{metric}"]})
    return events


def hf_events(out: Path) -> list[dict]:
    return _rows(out / "events.jsonl")


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            break
    return rows


def watch(command: list[str], read_events, *, until: str | None = None,
          env: dict | None = None, timeout: float = 3600) -> dict:
    """Run `command`, stamping each new event with seconds since launch; stop it at the first
    `until` event (None: let it finish). Returns {"events": [...], "wall_s": ..., "rc": ...}."""
    log = tempfile.TemporaryFile()
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **(env or {})},
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    seen: list[dict] = []
    while True:
        finished = proc.poll() is not None
        for event in read_events()[len(seen):]:
            seen.append({**event, "t_s": time.perf_counter() - start})
        if until and any(e["event"] == until for e in seen):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            break
        if finished:
            break
        if time.perf_counter() - start > timeout:
            os.killpg(proc.pid, signal.SIGKILL)
            raise SystemExit(f"{command[:3]} ran past {timeout:.0f} s")
        time.sleep(POLL_S)
    wall = time.perf_counter() - start
    if not until and proc.returncode:
        log.seek(0)
        raise SystemExit(f"{' '.join(command[:4])} failed (exit {proc.returncode}):\n"
                         f"{log.read().decode()[-3000:]}")
    return {"events": seen, "wall_s": wall, "rc": proc.returncode}


def startup(args, scratch: Path) -> dict:
    race = RACES["polarity_full"]
    data = scratch / "data"
    race.write_data(data)
    model = hf_model_dir(race, scratch)
    warm_cache = scratch / "warm-cache"

    def run_ftjax(cache: Path, tag: str) -> float:
        workdir = scratch / f"ftjax-{tag}"
        result = watch(ftjax_command(race, workdir, data, 20, 20, 1),
                       lambda: ftjax_events(workdir), until="first_step",
                       env={"FTJAX_COMPILE_CACHE": str(cache)})
        return _first(result)

    def run_hf(tag: str) -> float:
        out = scratch / f"hf-{tag}"
        return _first(watch(hf_command(race, model, out, data, 20, 20), lambda: hf_events(out),
                            until="first_step"))

    run_ftjax(warm_cache, "prime")  # fills the warm cache; warms the page cache
    run_hf("prime")
    rows = {"ftjax_cold": [], "ftjax_warm": [], "hf_trainer": []}
    for i in range(args.repeats):
        rows["ftjax_cold"].append(run_ftjax(scratch / f"cold-cache-{i}", f"cold-{i}"))
        rows["ftjax_warm"].append(run_ftjax(warm_cache, f"warm-{i}"))
        rows["hf_trainer"].append(run_hf(str(i)))
    medians = {k: statistics.median(v) for k, v in rows.items()}
    return {"first_step_s": medians, "runs_s": rows,
            "warm_vs_hf": medians["hf_trainer"] / medians["ftjax_warm"],
            "cold_vs_hf": medians["hf_trainer"] / medians["ftjax_cold"]}


def _first(result: dict) -> float:
    return next(e["t_s"] for e in result["events"] if e["event"] == "first_step")


def side_figures(race: Race, result: dict, steps: int, facts: dict) -> dict:
    """One side's figures from its stamped events: the target (relative ones from its own
    step-0 evaluation), when it was reached, throughput, the validation curve, the test figure."""
    evals = [e for e in result["events"] if e["event"] == "eval"]
    start = next((e[race.metric] for e in evals if e["step"] == 0), None)
    threshold = race.threshold(start)
    reached = next((e for e in evals if e["step"] > 0
                    and race.reached(e[race.metric], threshold)), None)
    examples = steps * race.batch_size
    return {
        "target": threshold,
        "wall_s": result["wall_s"],
        "time_to_target_s": reached["t_s"] if reached else None,
        "step_at_target": reached["step"] if reached else None,
        "examples_per_s": examples / result["wall_s"],
        "real_tokens_per_s": examples * facts["real_tokens_per_example"] / result["wall_s"],
        # (step, validation figure, seconds since launch)
        "validation_curve": [(e["step"], round(e[race.metric], 4), round(e["t_s"], 1))
                             for e in evals],
        f"test_{race.metric}": next(e[race.metric] for e in result["events"]
                                    if e["event"] == "test"),
    }


def accuracy(args, scratch: Path) -> dict:
    out = {}
    for name in args.races:
        race = RACES[name]
        steps, eval_every = (4, 2) if args.smoke else (race.steps, race.eval_every)
        data = scratch / f"data-{name}"
        facts = race.write_data(data)
        model = hf_model_dir(race, scratch)
        workdir, hf_out = scratch / f"ftjax-{name}", scratch / f"hf-{name}"
        sides = {
            "ftjax": watch(ftjax_command(race, workdir, data, steps, eval_every, eval_every),
                           lambda: ftjax_events(workdir, race.metric),
                           env={"FTJAX_COMPILE_CACHE": str(scratch / f"cache-{name}")}),
            "hf_trainer": watch(hf_command(race, model, hf_out, data, steps, eval_every),
                                lambda: hf_events(hf_out)),
        }
        row = {"metric": race.metric, "target": race.target, "relative_target": race.relative,
               "lr": race.lr, "steps": steps, "batch_size": race.batch_size,
               "max_length": race.max_length, "data": facts}
        row.update({side: side_figures(race, result, steps, facts)
                    for side, result in sides.items()})
        ours, theirs = row["ftjax"], row["hf_trainer"]
        row["wall_vs_hf"] = theirs["wall_s"] / ours["wall_s"]
        if ours["time_to_target_s"] and theirs["time_to_target_s"]:
            row["time_to_target_vs_hf"] = theirs["time_to_target_s"] / ours["time_to_target_s"]
        out[name] = row
    return out


def versions() -> dict:
    names = ("jax", "jaxlib", "flax", "optax", "torch", "transformers", "peft", "datasets")
    return {name: importlib.metadata.version(name) for name in names}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=("startup", "accuracy"))
    parser.add_argument("--repeats", type=int, default=3, help="startup: timed launches per side")
    parser.add_argument("--races", nargs="+", default=list(RACES), choices=list(RACES),
                        help="accuracy: which races (benchmarks/races.py)")
    parser.add_argument("--smoke", action="store_true", help="accuracy: 4 steps per run")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        figures = (startup if args.part == "startup" else accuracy)(args, Path(tmp))
    record = {"benchmark": f"race-{args.part}", "device": cpu_model(),
              "date": datetime.date.today().isoformat(),
              "command": "python -m benchmarks.race " + " ".join(argv or sys.argv[1:]),
              "wall_s": time.time() - started, "versions": versions(), **figures}
    out = args.out or RESULTS / f"race-{args.part}-{record['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(figures, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
