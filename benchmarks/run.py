"""Throughput / memory / compile-time benchmarks, ftjax against transformers + peft, one command.

    python -m benchmarks.run --suite gpu            # Llama 160M / 1.1B, full and LoRA, + sweeps
    python -m benchmarks.run --suite cpu            # MiniLM polarity step, full and LoRA
    python -m benchmarks.run --suite gpu --smoke    # tiny shapes on CPU, seconds: checks the script

Every job (one implementation, mode, size, sequence length) runs in its own subprocess
(benchmarks.worker), so peak memory is that job's alone. Rows go to
benchmarks/results/<run_id>.json as they complete (a killed run keeps what it measured): a list
of dicts with impl, mode, size, batch, seq, tokens_per_s, mfu, peak_gib, compile_s, device,
run_id, the library versions and the date, plus the step-time spread, FLOPs per token, the peak
used for MFU, each side's settings, and ftjax's speed ratios to the torch rows of the same run.
See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.specs import (
    CPU_BATCH,
    CPU_SEQ,
    GPU_BATCH,
    SIZES,
    Job,
    llama_flops_per_token,
    peak_flops,
)
from benchmarks.worker import RESULT_PREFIX

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PARTS = ("grid", "seq-sweep", "size-sweep")
OPTION_KEYS = ("dtype", "remat", "scan_layers", "attention_impl", "frozen_dtype", "base_dtype")


def gpu_jobs(args) -> list[Job]:
    jobs = _gpu_jobs(args)
    for job in jobs:
        job.options.update(args.option)
    return jobs


def _gpu_jobs(args) -> list[Job]:
    if args.smoke:
        return [Job("gpu", impl, mode, "tiny", 2, 16, steps=3, warmup=1, tag="smoke")
                for impl in args.impls for mode in args.modes]
    jobs = []
    if "grid" in args.parts:
        jobs += [Job("gpu", impl, mode, size, GPU_BATCH[size], 1024, args.steps, args.warmup,
                     "grid")
                 for size in args.sizes for mode in args.modes for impl in args.impls]
    compiled = [i for i in args.impls if i != "torch"]  # sweeps: ftjax vs the faster baseline
    if "seq-sweep" in args.parts:  # constant 8192 tokens per step; seq 1024 is the grid's row
        jobs += [Job("gpu", impl, "lora", "1.1B", 8192 // seq, seq, args.steps, args.warmup,
                     "seq-sweep") for seq in (512, 2048, 4096) for impl in compiled]
    if "size-sweep" in args.parts:  # 160M and 1.1B are the grid's rows
        jobs += [Job("gpu", impl, mode, "410M", GPU_BATCH["410M"], 1024, args.steps,
                     args.warmup, "size-sweep") for mode in args.modes for impl in compiled]
    return jobs


def cpu_jobs(args, batches_file: str) -> list[Job]:
    batch, seq, steps, warmup = (4, 16, 2, 1) if args.smoke else (
        CPU_BATCH, CPU_SEQ, args.steps, args.warmup)
    tag = "smoke" if args.smoke else ("single-thread" if args.single_thread else "grid")
    return [Job("cpu", impl, mode, "all-minilm-l6-v2", batch, seq, steps, warmup, tag,
                batches_file, {"single_thread": args.single_thread})
            for mode in args.modes for impl in args.impls]


def write_cpu_batches(path: Path, batch: int, seq: int, count: int) -> None:
    """Real polarity batches, tokenized once by ftjax's pipeline; both workers read these."""
    import numpy as np

    from ftjax import assets, data
    from ftjax.io.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_hf_dir(assets.resolve("all-minilm-l6-v2"), name="all-minilm-l6-v2")
    task = data.SequenceClassification("text", "label", num_labels=2, max_length=seq)
    iterator = data.make_train_iterator(data.polarity_splits(seed=0)["train"], task, tokenizer,
                                        batch_size=batch, seed=0)
    arrays = {}
    for i in range(count):
        b = next(iterator)
        b.setdefault("token_type_ids", np.zeros_like(b["input_ids"]))
        arrays.update({f"{i}/{k}": v for k, v in b.items()})
    np.savez(path, **arrays)


def versions() -> dict:
    out = {}
    for dist in ("jax", "jaxlib", "flax", "optax", "torch", "transformers", "peft"):
        try:
            out[f"{dist}_version"] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[f"{dist}_version"] = None
    return out


def run_job(job: Job, timeout: int) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.worker", json.dumps(dataclasses.asdict(job))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    pin = None
    if job.options.get("single_thread"):
        # One core each, by CPU affinity: the only setting that holds for both frameworks.
        # XLA's CPU runtime spreads a matmul over every core even with
        # --xla_cpu_multi_thread_eigen=false (768x384 @ 384x1536: 4.4 ms with the flag and
        # without it, 8.5 ms pinned to one core); torch's thread count follows OMP_NUM_THREADS.
        env["OMP_NUM_THREADS"] = "1"
        core = min(os.sched_getaffinity(0))
        pin = lambda: os.sched_setaffinity(0, {core})  # noqa: E731
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout, preexec_fn=pin)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    lines = [l for l in proc.stdout.splitlines() if l.startswith(RESULT_PREFIX)]
    if proc.returncode or not lines:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        return {"error": f"exit {proc.returncode}: " + "\n".join(tail)}
    result = json.loads(lines[-1][len(RESULT_PREFIX):])
    result["job_wall_s"] = time.perf_counter() - start
    return result


def make_row(job: Job, result: dict, run_id: str, common: dict) -> dict:
    row = {"impl": job.impl, "mode": job.mode, "size": job.size, "batch": job.batch,
           "seq": job.seq, "tokens_per_s": None, "mfu": None, "peak_gib": None,
           "compile_s": None, "device": result.get("device"), "run_id": run_id,
           "suite": job.suite, "tag": job.tag, **common}
    if "error" in result:
        row["error"] = result["error"]
        return row
    tokens = job.batch * job.seq
    row["tokens_per_s"] = tokens / result["step_s_median"]
    # The fastest timed step: less sensitive to other processes sharing the machine.
    row["tokens_per_s_best"] = tokens / result["step_s_min"]
    row.update({k: result[k] for k in ("peak_gib", "compile_s", "step_s_median", "step_s_min",
                                       "step_s_max", "first_step_s", "timed_steps", "peak_kind",
                                       "final_loss", "config", "job_wall_s")})
    if job.suite == "gpu":
        flops = llama_flops_per_token(SIZES[job.size], job.seq, job.mode)
        peak, source = peak_flops(result["device"] or "")
        row["flops_per_token"] = flops
        row["peak_flops_source"] = source
        row["mfu"] = flops * row["tokens_per_s"] / peak if peak else None
    return row


def add_ratios(rows: list[dict]) -> None:
    """ftjax tokens/s over each torch variant's, for rows of the same run and shape."""
    key = lambda r: (r["suite"], r["mode"], r["size"], r["batch"], r["seq"])  # noqa: E731
    base = {(key(r), r["impl"]): r for r in rows if r["impl"] != "ftjax" and r["tokens_per_s"]}
    for row in rows:
        if row["impl"] != "ftjax" or not row["tokens_per_s"]:
            continue
        for impl in ("torch", "torch.compile"):
            other = base.get((key(row), impl))
            if other:
                name = impl.replace(".", "_")
                row[f"vs_{name}"] = row["tokens_per_s"] / other["tokens_per_s"]
                row[f"vs_{name}_best"] = row["tokens_per_s_best"] / other["tokens_per_s_best"]
                if row["peak_gib"] and other["peak_gib"]:
                    row[f"peak_vs_{impl.replace('.', '_')}"] = row["peak_gib"] / other["peak_gib"]


def table(rows: list[dict]) -> str:
    head = ("impl | mode | size | batch x seq | tokens/s | best-step tokens/s | vs torch | "
            "vs compile | MFU | peak GiB | compile s")
    lines = [head, " | ".join(["---"] * 11)]
    fmt = lambda x, f: "-" if x is None else format(x, f)  # noqa: E731
    for r in rows:
        if "error" in r:
            lines.append(f"{r['impl']} | {r['mode']} | {r['size']} | {r['batch']} x {r['seq']} "
                         f"| error: {r['error'].splitlines()[-1][:60]} | | | | | |")
            continue
        lines.append(" | ".join([
            r["impl"], r["mode"], r["size"], f"{r['batch']} x {r['seq']}",
            fmt(r["tokens_per_s"], ",.0f"), fmt(r.get("tokens_per_s_best"), ",.0f"),
            fmt(r.get("vs_torch"), ".2f"),
            fmt(r.get("vs_torch_compile"), ".2f"), fmt(r["mfu"], ".1%"),
            fmt(r["peak_gib"], ".2f"), fmt(r["compile_s"], ".1f")]))
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    p.add_argument("--suite", choices=("gpu", "cpu"), required=True)
    p.add_argument("--smoke", action="store_true",
                   help="tiny shapes, few steps, on whatever device there is (checks the script)")
    p.add_argument("--impls", default=None, help="comma list of ftjax,torch,torch.compile")
    p.add_argument("--modes", default="full,lora")
    p.add_argument("--sizes", default="1.1B,160M", help="gpu suite grid sizes")
    p.add_argument("--parts", default=",".join(PARTS), help=f"gpu suite parts: {PARTS}")
    p.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--run-id", default=None)
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--timeout", type=int, default=1200, help="seconds per job")
    p.add_argument("--single-thread", action="store_true",
                   help="cpu suite: each worker pinned to one core (a contended machine)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="gpu suite settings, e.g. remat=dots, scan_layers=False, "
                        "attention_impl=cudnn, frozen_dtype=None (ftjax), base_dtype=float32 "
                        "(torch LoRA base)")
    args = p.parse_args(argv)
    options = {}
    for text in args.option:
        key, sep, value = text.partition("=")
        if not sep or key not in OPTION_KEYS:
            p.error(f"--option {text!r}: expected KEY=VALUE with KEY one of {OPTION_KEYS}")
        options[key] = {"None": None, "True": True, "False": False}.get(value, value)
    args.option = options
    default_impls = "ftjax,torch" if (args.suite == "cpu" or args.smoke) else \
        "ftjax,torch,torch.compile"
    args.impls = (args.impls or default_impls).split(",")
    args.modes, args.sizes, args.parts = (args.modes.split(","), args.sizes.split(","),
                                          args.parts.split(","))
    for name, values, allowed in (("impls", args.impls, ("ftjax", "torch", "torch.compile")),
                                  ("modes", args.modes, ("full", "lora")),
                                  ("sizes", args.sizes, tuple(GPU_BATCH)),
                                  ("parts", args.parts, PARTS)):
        bad = [v for v in values if v not in allowed]
        if bad:
            p.error(f"--{name}: unknown {bad}; choose from {allowed}")
    if args.steps < 10 and not args.smoke:
        p.error("--steps must be >= 10 (the figure is a median over timed steps)")
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    now = datetime.datetime.now(datetime.timezone.utc)
    run_id = args.run_id or f"{args.suite}{'-smoke' if args.smoke else ''}-{now:%Y%m%d-%H%M%S}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = {**versions(), "date": now.date().isoformat()}
    with tempfile.TemporaryDirectory() as tmp:
        if args.suite == "cpu":
            batches = Path(tmp) / "batches.npz"
            jobs = cpu_jobs(args, str(batches))
            write_cpu_batches(batches, jobs[0].batch, jobs[0].seq, jobs[0].warmup + jobs[0].steps)
        else:
            jobs = gpu_jobs(args)
        rows = []
        for i, job in enumerate(jobs, 1):
            print(f"[{i}/{len(jobs)}] {job.impl} {job.mode} {job.size} {job.batch}x{job.seq} "
                  f"({job.tag})", flush=True)
            rows.append(make_row(job, run_job(job, args.timeout), run_id, common))
            add_ratios(rows)
            (out / f"{run_id}.json").write_text(json.dumps(rows, indent=1))
    print(table(rows))
    print(f"wrote {out / f'{run_id}.json'}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
