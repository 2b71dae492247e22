"""`ftjax robustness CONFIG --workdir DIR [--split S] [--perturb OP@RATE ...] [--attack N]`:
a finished classifier's accuracy on perturbed copies of a split and under a greedy
word-substitution attack (ftjax.train.robustness); prints JSON and writes
WORKDIR/robustness-<split>.json."""

from __future__ import annotations

import json
from pathlib import Path

from ftjax.commands.errors import fail, user_errors


def add_arguments(parser) -> None:
    parser.add_argument("config")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--best", action="store_true", help="the best checkpoint, not the latest")
    parser.add_argument("--split", default="test", help="the split measured (default: test)")
    parser.add_argument("--perturb", action="append", default=[], metavar="OP@RATE",
                        help="a perturbation (default: the config's robustness.perturbations)")
    parser.add_argument("--attack", type=int, default=None, metavar="N",
                        help="attack the first N examples (default: the config's "
                        "robustness.attack_examples)")
    parser.add_argument("--budget", type=int, default=None,
                        help="texts the attack may score per example")


def run(args) -> int:
    from ftjax.settings.blocks import from_config
    from ftjax.train.config import load_config
    from ftjax.train.hooks.robustness import RobustnessEval
    from ftjax.train.restore import restore_run
    from ftjax.train.robustness import RobustnessConfig

    try:
        cfg = load_config(args.config, args.set)
        base = from_config(RobustnessConfig, cfg.robustness, "robustness")
        config = RobustnessConfig(
            perturbations=tuple(args.perturb) or base.perturbations,
            attack_examples=base.attack_examples if args.attack is None else args.attack,
            attack_budget=base.attack_budget if args.budget is None else args.budget,
            splits=(args.split,), seed=base.seed, wordnet=base.wordnet, senses=base.senses)
        if not config.enabled:
            raise ValueError("nothing to measure: give --perturb OP@RATE or --attack N (or a "
                             "robustness block in the config)")
        exp, restored = restore_run(args.workdir, best=args.best, cfg=cfg)
        if args.split not in exp.splits:
            raise ValueError(f"unknown split {args.split!r}; have {exp.splits}")
        metrics = RobustnessEval(config).measure(exp, restored.state.params, args.split)
    except (*user_errors(), ValueError, OSError) as err:
        return fail("robustness", err)
    out = {"step": restored.step, "split": args.split, "metrics": metrics}
    Path(args.workdir, f"robustness-{args.split}.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    return 0
