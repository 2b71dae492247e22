"""Serving many adapters from one base: 50 LoRA adapters on SmolLM2-135M in one process.

    python -m benchmarks.many_adapters                     # 50 adapters, 50 rows, CPU or GPU
    python -m benchmarks.many_adapters --adapters 8 --rows 16 --tokens 16 --new-tokens 4

Memory: the parameter bytes of the base plus every adapter side by side (adapter slots,
ftjax.models.adapter_slots) against 50 merged copies of the model (50 x the base's bytes; the
copies are counted from the model's size, not allocated). Speed: a batch whose rows each use
another adapter, scored (one forward pass) and continued (greedy decoding with a KV cache),
as one compiled program against looping over the adapters, each adapter's rows as their own
batch with its LoRA leaves swapped in (the same compiled program each time: only the
parameters change). Each timing is the fastest of --repeats after a compile run; throughput
is reported as a ratio against the loop measured in the same run, with the device name.
Results: benchmarks/results/many_adapters-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ftjax.generate.decode import run_generation
from ftjax.generate.sampling import SamplingConfig
from ftjax.io import load_pretrained
from ftjax.peft import LoraConfig, add_lora, from_adapters, single_adapter
from ftjax.utils.tree import split_leaves

LORA_LEAVES = r".*/lora_(?:a|b)"


def nbytes(tree) -> int:
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def make_adapters(pretrained, count: int, rank: int):
    """`count` distinct LoRA adapters (random B: a fresh adapter is the identity)."""
    model, params = add_lora(pretrained.model, pretrained.params,
                             LoraConfig(rank=rank, alpha=2.0 * rank), jax.random.key(0))
    base, fresh = split_leaves(params, LORA_LEAVES)
    adapters = {}
    for i in range(count):
        key = jax.random.key(1000 + i)
        adapters[f"task{i:02d}"] = jax.tree.map(
            lambda x, k=key: (x + 0.02 * jax.random.normal(k, x.shape)).astype(x.dtype), fresh)
    return model, base, adapters


def fastest(fn, repeats: int) -> float:
    """The fastest of `repeats` timed calls of fn (which must block until its work is done),
    after one untimed call that compiles."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--adapters", type=int, default=50)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--rows", type=int, default=50, help="rows per batch, round robin over "
                        "the adapters")
    parser.add_argument("--tokens", type=int, default=32, help="prompt tokens per row")
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    started = time.time()

    pretrained = load_pretrained(args.model, dtype="float32")
    single, base, adapters = make_adapters(pretrained, args.adapters, args.rank)
    model, params = from_adapters(single, base, adapters, LORA_LEAVES)
    names = list(adapters)
    rows = np.arange(args.rows) % len(names)
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(10, 1000, (args.rows, args.tokens)), jnp.int32)

    base_bytes = nbytes(base)
    adapter_bytes = nbytes(split_leaves(params, LORA_LEAVES)[1])
    memory = {"base_bytes": base_bytes, "adapters_bytes": adapter_bytes,
              "one_process_bytes": base_bytes + adapter_bytes,
              "merged_copies_bytes": base_bytes * len(names),
              "ratio_merged_over_one_process": base_bytes * len(names) / (base_bytes
                                                                         + adapter_bytes)}

    mixed_forward = jax.jit(lambda p, x, a: model.apply({"params": p}, x,
                                                        adapter_ids=a).logits[:, -1])
    single_forward = jax.jit(lambda p, x: single.apply({"params": p}, x).logits[:, -1])
    own = {name: single_adapter(model, params, name)[1] for name in names}
    groups = {i: np.flatnonzero(rows == i) for i in range(len(names))}
    groups = {i: g for i, g in groups.items() if len(g)}

    # Correctness first: the mixed batch gives each row what its own adapter gives it.
    mixed = np.asarray(mixed_forward(params, ids, jnp.asarray(rows)))
    for i, g in list(groups.items())[:4]:
        alone = np.asarray(single_forward(own[names[i]], ids[g]))
        np.testing.assert_allclose(mixed[g], alone, rtol=2e-4, atol=2e-4)

    def loop_forward():
        return jax.block_until_ready([single_forward(own[names[i]], ids[g])
                                      for i, g in groups.items()])

    forward = {"mixed_s": fastest(lambda: jax.block_until_ready(
                   mixed_forward(params, ids, jnp.asarray(rows))), args.repeats),
               "loop_s": fastest(loop_forward, args.repeats)}
    forward["tokens"] = args.rows * args.tokens
    forward["mixed_tokens_per_s"] = forward["tokens"] / forward["mixed_s"]
    forward["loop_tokens_per_s"] = forward["tokens"] / forward["loop_s"]
    forward["speedup_mixed_over_loop"] = forward["loop_s"] / forward["mixed_s"]

    prompts = np.asarray(ids).tolist()
    greedy = SamplingConfig(greedy=True)

    def generate_mixed():
        return run_generation(model, params, prompts, max_new_tokens=args.new_tokens,
                              sampling=greedy, eos_ids=[], adapters=rows.tolist())

    def generate_loop():
        return [run_generation(single, own[names[i]], [prompts[r] for r in g],
                               max_new_tokens=args.new_tokens, sampling=greedy, eos_ids=[])
                for i, g in groups.items()]

    mixed_text = generate_mixed().token_ids
    for i, g in list(groups.items())[:2]:
        alone = run_generation(single, own[names[i]], [prompts[r] for r in g],
                               max_new_tokens=args.new_tokens, sampling=greedy, eos_ids=[])
        assert [mixed_text[r] for r in g] == alone.token_ids, names[i]
    # run_generation returns host lists: it has waited for the device.
    generation = {"mixed_s": fastest(generate_mixed, args.repeats),
                  "loop_s": fastest(generate_loop, args.repeats),
                  "new_tokens": args.rows * args.new_tokens}
    generation["speedup_mixed_over_loop"] = generation["loop_s"] / generation["mixed_s"]

    device = jax.devices()[0]
    record = {
        "command": " ".join(["python -m benchmarks.many_adapters", *(argv or sys.argv[1:])]),
        "model": args.model, "adapters": len(names), "rank": args.rank, "rows": args.rows,
        "prompt_tokens": args.tokens, "new_tokens": args.new_tokens, "repeats": args.repeats,
        "device": getattr(device, "device_kind", device.platform),
        "machine": platform.node(), "cpu_count": os.cpu_count(),
        "jax": jax.__version__, "date": datetime.date.today().isoformat(),
        "wall_s": round(time.time() - started, 1),
        "memory": memory, "forward": forward, "generation": generation,
    }
    out = Path("benchmarks/results") / f"many_adapters-{record['date']}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"device {record['device']}; {len(names)} adapters (rank {args.rank}) on "
          f"{args.model}")
    print(f"memory: base + adapters {memory['one_process_bytes'] / 2**20:.1f} MiB vs "
          f"{len(names)} merged copies {memory['merged_copies_bytes'] / 2**20:.1f} MiB "
          f"({memory['ratio_merged_over_one_process']:.1f}x)")
    print(f"forward {args.rows}x{args.tokens}: mixed {forward['mixed_s']:.3f} s, loop "
          f"{forward['loop_s']:.3f} s ({forward['speedup_mixed_over_loop']:.2f}x)")
    print(f"generate {args.new_tokens} tokens: mixed {generation['mixed_s']:.3f} s, loop "
          f"{generation['loop_s']:.3f} s ({generation['speedup_mixed_over_loop']:.2f}x)")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
