"""Generation speed: ftjax's decoder against transformers `generate`, SmolLM2-135M on CPU.

    python -m benchmarks.generation                 # batch 1 and 8, prompts of 64 and 512 tokens
    python -m benchmarks.generation --smoke         # one small case: checks the script

Both sides load the same fp32 checkpoint (SmolLM2-135M-Instruct, written once as an HF directory
by ftjax.io.save_hf) and continue the same real prompts (polarity review sentences joined and cut
to exactly P tokens, a different offset per row) greedily by 128 new tokens. Neither stops at EOS
(ftjax: eos_ids=[]; transformers: generation_config.eos_token_id=None), so both produce exactly
128 tokens per row and their token ids can be compared position by position.

Measured per case, after one untimed call of the same shapes (ftjax compiles there), median of
--repeats calls:
- ttft_s: time to the first new token: ftjax's prefill program (prompt forward + first token);
  transformers' `generate(max_new_tokens=1)`.
- total_s / tokens_per_s: the whole call; batch x new tokens / total_s.
ftjax runs `ftjax.generate.decode.run_generation` (what `ftjax generate` and the notebook API
call): one jitted prefill and one jitted `lax.while_loop` over a KV cache. transformers runs its
default `generate` (dynamic KV cache, eager PyTorch, sdpa attention). Each side runs in its own
process. Results: benchmarks/results/generation-<date>.json, with the CPU model and versions.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.specs import cpu_model, max_rss_gib

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODEL = "smollm2-135m-instruct"
CASES = ((1, 64), (8, 64), (1, 512), (8, 512))  # (batch, prompt tokens)
SMOKE_CASES = ((2, 16),)
NEW_TOKENS = 128
RESULT_PREFIX = "GENERATION_RESULT "


def real_prompts(tokenizer, batch: int, length: int) -> list[list[int]]:
    """`batch` prompts of exactly `length` tokens of review text, row r starting at sentence 7r."""
    from ftjax.data import polarity_splits

    sentences = [row["text"] for row in polarity_splits()["train"]]
    rows = []
    for r in range(batch):
        ids: list[int] = []
        i = 7 * r
        while len(ids) < length:
            ids += tokenizer.encode(" " + sentences[i])
            i += 1
        rows.append(ids[:length])
    return rows


def prepare(directory: Path, cases) -> Path:
    """The shared fp32 HF checkpoint and the prompts of every case, under `directory`."""
    from ftjax.io import load_pretrained, save_hf

    base = load_pretrained(MODEL, dtype="float32")
    checkpoint = save_hf(base.model, base.params, directory / "hf", tokenizer=base.tokenizer)
    spec = {"checkpoint": str(checkpoint),
            "cases": [{"batch": b, "prompt_tokens": p,
                       "prompts": real_prompts(base.tokenizer, b, p)} for b, p in cases]}
    path = directory / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def _median_row(runs: list[dict]) -> dict:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def run_ftjax(spec: dict, new_tokens: int, repeats: int) -> list[dict]:
    import jax

    from ftjax.generate.decode import run_generation
    from ftjax.generate.sampling import SamplingConfig
    from ftjax.io import load_pretrained

    pretrained = load_pretrained(spec["checkpoint"], dtype="float32")
    greedy = SamplingConfig(greedy=True)
    rows = []
    for case in spec["cases"]:
        def call(warmup=False):
            return run_generation(pretrained.model, pretrained.params, case["prompts"],
                                  max_new_tokens=new_tokens, sampling=greedy, eos_ids=[],
                                  warmup=warmup)
        compile_s = call(warmup=True).compile_seconds
        runs, result = [], None
        for _ in range(repeats):
            result = call()
            total = result.prefill_seconds + result.decode_seconds
            runs.append({"ttft_s": result.prefill_seconds, "total_s": total})
        rows.append({**_case_fields(case), **_median_row(runs), "compile_s": compile_s,
                     "token_ids": result.token_ids})
    return _finish(rows, new_tokens, {"jax": jax.__version__,
                                      "backend": jax.default_backend()})


def run_torch(spec: dict, new_tokens: int, repeats: int) -> list[dict]:
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        spec["checkpoint"], dtype=torch.float32, attn_implementation="sdpa").eval()
    model.generation_config.eos_token_id = None  # never stop early: exactly new_tokens per row
    rows = []
    for case in spec["cases"]:
        ids = torch.tensor(case["prompts"], dtype=torch.long)
        mask = torch.ones_like(ids)

        def call(n):
            start = time.perf_counter()
            with torch.inference_mode():
                out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n,
                                     do_sample=False, pad_token_id=0)
            return time.perf_counter() - start, out

        call(new_tokens)  # warm-up: first-call overheads, the same shapes
        runs, out = [], None
        for _ in range(repeats):
            ttft, _ = call(1)
            total, out = call(new_tokens)
            runs.append({"ttft_s": ttft, "total_s": total})
        tokens = out[:, ids.shape[1]:].tolist()
        rows.append({**_case_fields(case), **_median_row(runs), "token_ids": tokens})
    return _finish(rows, new_tokens, {"torch": torch.__version__,
                                      "transformers": transformers.__version__,
                                      "threads": torch.get_num_threads()})


def _case_fields(case: dict) -> dict:
    return {"batch": case["batch"], "prompt_tokens": case["prompt_tokens"]}


def _finish(rows: list[dict], new_tokens: int, versions: dict) -> list[dict]:
    for row in rows:
        row["new_tokens"] = new_tokens
        row["tokens_per_s"] = row["batch"] * new_tokens / row["total_s"]
        row.update(versions)
        row["peak_rss_gib"] = max_rss_gib()  # the process's peak so far (model + all cases)
    return rows


def agreement(ours: list[list[int]], theirs: list[list[int]]) -> dict:
    """How far the two greedy continuations agree: identical rows and the mean agreeing prefix."""
    prefixes = []
    for a, b in zip(ours, theirs):
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        prefixes.append(n)
    return {"rows_identical": sum(a == b for a, b in zip(ours, theirs)), "rows": len(ours),
            "mean_agreeing_prefix": sum(prefixes) / len(prefixes)}


def compare(ftjax_rows: list[dict], torch_rows: list[dict]) -> list[dict]:
    """One row per case: both sides' figures and ftjax's ratios (speed: ftjax over torch)."""
    out = []
    for ours, theirs in zip(ftjax_rows, torch_rows):
        row = _case_fields(ours) | {"new_tokens": ours["new_tokens"]}
        for side, r in (("ftjax", ours), ("torch", theirs)):
            row |= {f"{side}_{k}": r[k] for k in ("ttft_s", "total_s", "tokens_per_s")}
        row["ftjax_compile_s"] = ours["compile_s"]
        row["tokens_per_s_vs_torch"] = ours["tokens_per_s"] / theirs["tokens_per_s"]
        row["ttft_speedup_vs_torch"] = theirs["ttft_s"] / ours["ttft_s"]
        row["same_outputs"] = agreement(ours["token_ids"], theirs["token_ids"])
        out.append(row)
    return out


def _worker(argv: list[str]) -> int:
    impl, spec_path, new_tokens, repeats = argv[0], argv[1], int(argv[2]), int(argv[3])
    spec = json.loads(Path(spec_path).read_text())
    rows = (run_ftjax if impl == "ftjax" else run_torch)(spec, new_tokens, repeats)
    print(RESULT_PREFIX + json.dumps(rows), flush=True)
    return 0


def _spawn(impl: str, spec: Path, new_tokens: int, repeats: int) -> list[dict]:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.generation", "--worker", impl, str(spec),
         str(new_tokens), str(repeats)], cwd=ROOT, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    raise SystemExit(f"the {impl} worker failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return _worker(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="one small case, 8 new tokens")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per case (median)")
    parser.add_argument("--out", type=Path, help="results file (default: benchmarks/results/"
                                                 "generation-<date>.json)")
    args = parser.parse_args(argv)
    cases, new_tokens = (SMOKE_CASES, 8) if args.smoke else (CASES, NEW_TOKENS)
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        spec = prepare(Path(tmp), cases)
        ftjax_rows = _spawn("ftjax", spec, new_tokens, args.repeats)
        torch_rows = _spawn("torch", spec, new_tokens, args.repeats)
    rows = compare(ftjax_rows, torch_rows)
    record = {"benchmark": "generation", "model": MODEL, "dtype": "float32", "greedy": True,
              "device": cpu_model(), "date": datetime.date.today().isoformat(),
              "command": "python -m benchmarks.generation" + (" --smoke" if args.smoke else ""),
              "repeats": args.repeats, "wall_s": time.time() - started,
              "versions": {k: ftjax_rows[0][k] for k in ("jax",)}
              | {k: torch_rows[0][k] for k in ("torch", "transformers", "threads")},
              "rows": rows}
    out = args.out or RESULTS / f"generation-{record['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    for row in rows:
        print(f"batch {row['batch']} prompt {row['prompt_tokens']}: ftjax "
              f"{row['ftjax_tokens_per_s']:.1f} tok/s (ttft {row['ftjax_ttft_s']:.3f} s), "
              f"transformers {row['torch_tokens_per_s']:.1f} tok/s "
              f"(ttft {row['torch_ttft_s']:.3f} s): {row['tokens_per_s_vs_torch']:.2f}x; "
              f"identical rows {row['same_outputs']['rows_identical']}/{row['batch']}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
