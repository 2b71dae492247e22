"""What users feel, end to end: `ftjax train` against an HF Trainer script on the same data.

    python -m benchmarks.race startup       # launch -> first finished step: ftjax cold / warm cache, HF
    python -m benchmarks.race accuracy      # time to a validation target and test accuracy, full + LoRA
    python -m benchmarks.race accuracy --smoke   # a few steps of each: checks the script

Both sides fine-tune all-MiniLM-L6-v2 on the polarity splits that ftjax uses (written once as
{train,validation,test}.jsonl, read by both) into the same model: BERT's pooler + dropout 0.1 + a
linear classifier (`head.pooling=pooler` in ftjax, BertForSequenceClassification in
transformers). Same recipe: batch 32, max length 64, AdamW (weight decay 0.01, eps 1e-8), linear
warm-up (40 steps) and decay, gradient clipping 1.0, shuffled every epoch (each framework its own
seeded order), rows grouped by length and padded per batch (HF: dynamic padding +
train_sampling_strategy="group_by_length"; ftjax: `data.group_by_length` + `data.buckets`), validation accuracy every 50
steps, the final weights tested. Full fine-tuning lr 5e-5, LoRA (r 8, alpha 16 on query / value,
the classifier and pooler train in both) lr 1e-3; 400 steps.

Each run is one process, timed from outside: the runner starts it and polls the files it writes
(ftjax: WORKDIR/metrics.jsonl; HF: OUT/events.jsonl from a callback), stamping each new row with
the seconds since launch. So every time includes imports, data loading and tokenization, model
loading and compilation. Runs go one after another, never side by side.

startup: launch to the first finished optimizer step (log_every=1), median of --repeats: ftjax
with an empty compilation cache (cold), ftjax again on the cache a previous run filled (warm:
jax's persistent cache, what a second `ftjax train` of an experiment gets), and the HF script.
One untimed run of each first, so imports come from the page cache for both.
accuracy: for full and LoRA, wall seconds to the first validation accuracy >= the target (fixed
before measuring: full 0.82, LoRA 0.80, both below what either reaches in 400 steps of the demo
recipe), total wall seconds, examples/s and real (non-padding) tokens/s over the whole run, and
test accuracy of the final weights.
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

from benchmarks.specs import cpu_model

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
EXPERIMENT = ROOT / "experiments" / "polarity_minilm.py"
MODEL = "all-minilm-l6-v2"
MAX_LENGTH = 64
BATCH_SIZE = 32
BUCKETS = (16, 32, 48, 64)
GROUP_WINDOW = 50  # batches per length-sorting window (HF's megabatches are 50 batches)
RECIPES = {"full": {"lr": 5e-5, "target": 0.82}, "lora": {"lr": 1e-3, "target": 0.80}}
POLL_S = 0.02


def write_polarity(directory: Path) -> Path:
    """The polarity splits ftjax trains on, as jsonl files both sides read."""
    from ftjax.data import polarity_splits

    directory.mkdir(parents=True, exist_ok=True)
    for split, rows in polarity_splits().items():
        with open(directory / f"{split}.jsonl", "w") as f:
            for row in rows:
                f.write(json.dumps({"text": row["text"], "label": int(row["label"])}) + "\n")
    return directory


def mean_real_tokens(data: Path) -> float:
    """Mean tokens per training example after truncation to MAX_LENGTH (the tokenizer both use)."""
    from ftjax import assets
    from ftjax.io.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(assets.resolve(MODEL))
    lengths = [min(len(tokenizer.encode(json.loads(line)["text"])), MAX_LENGTH)
               for line in open(data / "train.jsonl")]
    return sum(lengths) / len(lengths)


def ftjax_command(workdir: Path, data: Path, mode: str, steps: int, eval_every: int,
                  log_every: int) -> list[str]:
    sets = {"data.source": "local", "data.path": str(data / "{split}.jsonl"),
            "head.pooling": "pooler", "head.dropout": 0.1, "method": mode,
            "batch_size": BATCH_SIZE, "task.max_length": MAX_LENGTH,
            "optimizer.learning_rate": RECIPES[mode]["lr"], "steps": steps,
            "eval_every": eval_every, "log_every": log_every, "checkpoint_every": steps,
            "best_metric": "", "data.buckets": BUCKETS, "data.group_by_length": GROUP_WINDOW}
    command = [str(Path(sys.executable).with_name("ftjax")), "train", str(EXPERIMENT),
               "--workdir", str(workdir), "--quiet"]
    for key, value in sets.items():
        command += ["--set", f"{key}={value}"]
    return command


def hf_command(out: Path, data: Path, mode: str, steps: int, eval_every: int) -> list[str]:
    from ftjax import assets

    return [sys.executable, str(ROOT / "benchmarks" / "hf_polarity.py"),
            "--model", str(assets.resolve(MODEL)), "--data", str(data), "--out", str(out),
            "--mode", mode, "--steps", str(steps), "--eval-every", str(eval_every),
            "--lr", str(RECIPES[mode]["lr"]), "--max-length", str(MAX_LENGTH),
            "--batch-size", str(BATCH_SIZE)]


def ftjax_events(workdir: Path) -> list[dict]:
    """metrics.jsonl rows as events: first_step (train row of step 1), eval (validation), test
    (the final row's test accuracy)."""
    events = []
    for row in _rows(workdir / "metrics.jsonl"):
        if "split" not in row and row.get("step") == 1:
            events.append({"event": "first_step", "step": 1})
        elif row.get("split") == "validation":
            events.append({"event": "eval", "step": row["step"], "accuracy": row["accuracy"]})
        elif row.get("split") == "final":  # the run's reported figures (FinalReport)
            events.append({"event": "test", "step": row["step"],
                           "accuracy": row["test_accuracy"]})
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


def startup(args, data: Path, scratch: Path) -> dict:
    warm_cache = scratch / "warm-cache"

    def run_ftjax(cache: Path, tag: str) -> float:
        workdir = scratch / f"ftjax-{tag}"
        result = watch(ftjax_command(workdir, data, "full", 20, 20, 1),
                       lambda: ftjax_events(workdir), until="first_step",
                       env={"FTJAX_COMPILE_CACHE": str(cache)})
        return _first(result)

    def run_hf(tag: str) -> float:
        out = scratch / f"hf-{tag}"
        return _first(watch(hf_command(out, data, "full", 20, 20), lambda: hf_events(out),
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


def accuracy(args, data: Path, scratch: Path) -> dict:
    steps, eval_every = (4, 2) if args.smoke else (args.steps, 50)
    tokens_per_example = mean_real_tokens(data)
    out = {"mean_real_tokens_per_example": tokens_per_example}
    for mode in args.modes:
        target = RECIPES[mode]["target"]
        workdir, hf_out = scratch / f"ftjax-{mode}", scratch / f"hf-{mode}"
        sides = {
            "ftjax": watch(ftjax_command(workdir, data, mode, steps, eval_every, eval_every),
                           lambda: ftjax_events(workdir),
                           env={"FTJAX_COMPILE_CACHE": str(scratch / f"cache-{mode}")}),
            "hf_trainer": watch(hf_command(hf_out, data, mode, steps, eval_every),
                                lambda: hf_events(hf_out)),
        }
        row = {"target": target, "lr": RECIPES[mode]["lr"], "steps": steps}
        for side, result in sides.items():
            evals = [e for e in result["events"] if e["event"] == "eval"]
            reached = next((e for e in evals if e["accuracy"] >= target), None)
            examples = steps * BATCH_SIZE
            row[side] = {
                "wall_s": result["wall_s"],
                "time_to_target_s": reached["t_s"] if reached else None,
                "step_at_target": reached["step"] if reached else None,
                "examples_per_s": examples / result["wall_s"],
                "real_tokens_per_s": examples * tokens_per_example / result["wall_s"],
                # (step, validation accuracy, seconds since launch)
                "validation_curve": [(e["step"], round(e["accuracy"], 4), round(e["t_s"], 1))
                                     for e in evals],
                "test_accuracy": next(e["accuracy"] for e in result["events"]
                                      if e["event"] == "test"),
            }
        ours, theirs = row["ftjax"], row["hf_trainer"]
        row["wall_vs_hf"] = theirs["wall_s"] / ours["wall_s"]
        if ours["time_to_target_s"] and theirs["time_to_target_s"]:
            row["time_to_target_vs_hf"] = theirs["time_to_target_s"] / ours["time_to_target_s"]
        out[mode] = row
    return out


def versions() -> dict:
    names = ("jax", "jaxlib", "flax", "optax", "torch", "transformers", "peft", "datasets")
    return {name: importlib.metadata.version(name) for name in names}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=("startup", "accuracy"))
    parser.add_argument("--repeats", type=int, default=3, help="startup: timed launches per side")
    parser.add_argument("--modes", nargs="+", default=["full", "lora"], choices=list(RECIPES))
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--smoke", action="store_true", help="accuracy: 4 steps per run")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        data = write_polarity(scratch / "data")
        figures = (startup if args.part == "startup" else accuracy)(args, data, scratch)
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
