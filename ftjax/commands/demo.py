"""`ftjax demo`: fine-tune all-MiniLM-L6-v2 on the polarity corpus with several methods and print
a table of method, trainable-parameter share, validation and test accuracy and wall time.

Each method is one run of experiments/demo_polarity.py with `--set method=...` (and its own
learning rate), in WORKDIR/<method>; re-running the demo resumes or reuses finished runs.
"""

from __future__ import annotations

import json
from pathlib import Path

from ftjax.commands.errors import fail, user_errors

# method -> overrides. The fewer parameters a method trains, the larger its step: a linear probe
# trains only a fresh head. Gradual unfreezing opens one more block every 30 of the 300 steps
# (head first, embeddings last), so everything trains for the last ~90 steps.
DEMO_RUNS = {
    "full": ["method=full", "optimizer.learning_rate=5e-5"],
    "linear_probe": ["method=linear_probe", "optimizer.learning_rate=3e-3"],
    "top_layers": ["method=top_layers", "optimizer.learning_rate=1e-4", "method_args.top_k=2"],
    "bitfit": ["method=bitfit", "optimizer.learning_rate=1e-3"],
    "llrd": ["method=llrd", "optimizer.learning_rate=1e-4", "method_args.decay=0.8"],
    "gradual_unfreeze": ["method=gradual_unfreeze", "optimizer.learning_rate=1e-4",
                         "method_args.unfreeze_every=30"],
    # Rank-8 adapters on the query and value projections plus the new head.
    "lora": ["method=lora", "optimizer.learning_rate=1e-3", "lora.rank=8", "lora.alpha=16"],
    # The other PEFT methods with their default settings (bottleneck 384 / 16 = 24, 20 virtual
    # tokens, (IA)^3 on keys, values and the MLP) plus the new head. The fewer and the more
    # input-like the trained numbers, the larger the step.
    "houlsby": ["method=houlsby", "optimizer.learning_rate=1e-3"],
    "pfeiffer": ["method=pfeiffer", "optimizer.learning_rate=1e-3"],
    "prefix": ["method=prefix", "optimizer.learning_rate=1e-2"],
    "prompt": ["method=prompt", "optimizer.learning_rate=3e-2"],
    "ia3": ["method=ia3", "optimizer.learning_rate=1e-2"],
}
DEFAULT_METHODS = ["full", "linear_probe"]  # what `make demo` runs within its time budget


def add_arguments(parser) -> None:
    parser.add_argument("--workdir", default="workdirs/demo")
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(DEMO_RUNS),
                        help="trainability presets to compare (default: %(default)s)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra overrides applied to every run (e.g. steps=100)")


def experiment_path() -> Path:
    path = Path(__file__).resolve().parents[2] / "experiments" / "demo_polarity.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the demo runs from a source checkout "
                                f"(pip install -e .)")
    return path


def format_table(rows: list[dict]) -> str:
    header = ("method", "trainable", "share", "val acc", "test acc", "wall s")
    lines = [" | ".join(header), " | ".join("---" for _ in header)]
    for r in rows:
        lines.append(" | ".join([
            r["method"], f"{r['trainable']:,}", f"{100 * r['share']:.3f}%",
            f"{r['validation']:.4f}", f"{r['test']:.4f}", f"{r['wall_s']:.0f}",
        ]))
    return "\n".join(lines)


def run(args) -> int:
    from ftjax.train.config import load_config
    from ftjax.train.loop import train

    rows = []
    for method in args.methods:
        workdir = Path(args.workdir) / method
        try:
            result = train(load_config(experiment_path(), DEMO_RUNS[method] + args.set), workdir)
        except user_errors() as err:
            return fail("demo", err)
        if result.interrupted:
            return 130
        report = json.loads((workdir / "params_report.json").read_text())
        rows.append({
            "method": method, "trainable": report["trainable"],
            "share": report["trainable"] / report["total"],
            "validation": result.eval["validation"]["accuracy"],
            "test": result.eval["test"]["accuracy"], "wall_s": result.wall_s,
        })
        print(f"{method}: test accuracy {rows[-1]['test']:.4f} ({result.wall_s:.0f} s)", flush=True)
    table = format_table(rows)
    print("\nall-MiniLM-L6-v2 on sentence polarity (Pang & Lee, 1,056 test sentences)\n")
    print(table)
    (Path(args.workdir) / "table.md").write_text(table + "\n")
    return 0
