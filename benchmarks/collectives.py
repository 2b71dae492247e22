"""What a sharded train step communicates: the collectives in its compiled program, and its time.

    python -m benchmarks.collectives experiments/polarity_minilm.py --mesh 2,2,2 [--set k=v ...]

Builds the experiment exactly as `ftjax train` does on a faked CPU mesh of data x fsdp x tensor
devices (default 8: the flag is set before jax starts), compiles its train step and lists every
collective op of the optimized HLO by kind: how many, and the bytes of their results (a static
count: an op inside the scanned layer loop counts once, not once per layer). It also prints
XLA's "Involuntary full rematerialization" warnings (a resharding the SPMD partitioner could
only do by replicating a tensor) and the median time of a few steps, which on faked CPU
devices only compares programs with each other, never with a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
_OP = re.compile(r"=\s*(.+?)\s+(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")
_SHAPE = re.compile(r"(pred|[a-z]+\d+)\[([\d,]*)\]")
_BITS = {"pred": 8}


def _nbytes(result_type: str) -> int:
    total = 0
    for dtype, dims in _SHAPE.findall(result_type):
        bits = _BITS.get(dtype) or int(re.sub(r"\D", "", dtype))
        count = 1
        for d in filter(None, dims.split(",")):
            count *= int(d)
        total += count * bits // 8
    return total


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
    """{kind: {"ops": n, "bytes": b}} over the optimized HLO's collective instructions."""
    found = {kind: {"ops": 0, "bytes": 0} for kind in COLLECTIVES}
    for line in hlo_text.splitlines():
        match = _OP.search(line)
        if match:
            found[match.group(2)]["ops"] += 1
            found[match.group(2)]["bytes"] += _nbytes(match.group(1))
    return {k: v for k, v in found.items() if v["ops"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--mesh", default="2,2,2", help="data,fsdp,tensor sizes")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after the first")
    args = parser.parse_args(argv)
    data, fsdp, tensor = (int(x) for x in args.mesh.split(","))
    os.environ["XLA_FLAGS"] = (f"{os.environ.get('XLA_FLAGS', '')} "
                               f"--xla_force_host_platform_device_count={data * fsdp * tensor}")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    import jax

    from ftjax.train.config import load_config
    from ftjax.train.experiment import build_experiment

    cfg = load_config(args.config, [*args.set, f"mesh.data={data}", f"mesh.fsdp={fsdp}",
                                    f"mesh.tensor={tensor}"])
    exp = build_experiment(cfg)
    step = exp.jit_train_step()
    batches = exp.train_iterator()
    batch = exp.place_train_batch(next(batches))
    # XLA warns from C++: catch file descriptor 2 in a file while the step compiles.
    with tempfile.TemporaryFile(mode="w+") as log:
        saved_stderr = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            compiled = step.lower(exp.state, batch).compile()
        finally:
            os.dup2(saved_stderr, 2)
            os.close(saved_stderr)
        log.seek(0)
        involuntary = [line for line in log if "Involuntary full rematerialization" in line]
    state = exp.state
    times = []
    for i in range(args.steps + 1):
        start = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        if i:
            times.append(time.perf_counter() - start)
        batch = exp.place_train_batch(next(batches))
    times.sort()
    print(json.dumps({
        "config": args.config, "mesh": dict(exp.mesh.shape), "overrides": args.set,
        "collectives": collectives(compiled.as_text()),
        "involuntary_rematerializations": len(involuntary),
        "median_step_s": times[len(times) // 2], "device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
