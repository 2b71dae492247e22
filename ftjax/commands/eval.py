"""`ftjax eval CONFIG --workdir DIR [--best] [--split S ...]`: evaluate a run's checkpoint."""

from __future__ import annotations

import json

from ftjax.commands.train import add_distributed_argument, init_distributed


def add_arguments(parser) -> None:
    parser.add_argument("config")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--best", action="store_true", help="the best checkpoint, not the latest")
    parser.add_argument("--split", action="append", default=[],
                        help="split(s) to evaluate (default: validation and test)")
    add_distributed_argument(parser)


def run(args) -> int:
    if not init_distributed(args):
        return 2
    from ftjax.io import CheckpointError
    from ftjax.train.config import ConfigError, load_config
    from ftjax.train.experiment import evaluate, restore_run

    try:
        cfg = load_config(args.config, args.set)
        exp, restored = restore_run(args.workdir, best=args.best, cfg=cfg)
    except (ConfigError, FileNotFoundError, CheckpointError) as err:
        print(f"ftjax eval: {err}")
        return 2
    eval_step = exp.jit_eval_step()
    splits = args.split or [s for s in ("validation", "test") if s in exp.splits]
    unknown = [s for s in splits if s not in exp.splits]
    if unknown:
        print(f"ftjax eval: unknown split(s) {unknown}; have {sorted(exp.splits)}")
        return 2
    results = {s: evaluate(eval_step, restored.state, exp.placed_eval_batches(s)) for s in splits}
    print(json.dumps({"step": restored.step, "eval": results}, indent=2))
    return 0
