"""`ftjax fisher WORKDIR`: the diagonal Fisher information of a finished run on its train data,
written to WORKDIR/fisher.safetensors (or --out) for the `ewc` loss term of the runs that follow.

  ftjax fisher runs/stage1 --examples 1000
  ftjax fisher runs/stage2 --previous runs/stage1/fisher.safetensors --decay 0.9   # online EWC

The estimate uses the weights the run reports (its best checkpoint when it kept one) and a
seeded sample of at most --examples train examples of each trained source (ftjax.train.fisher).
"""

from __future__ import annotations

import argparse

from ftjax.commands.errors import fail, user_errors


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("workdir", help="a finished `ftjax train` run")
    parser.add_argument("--examples", type=int, default=1000, metavar="N",
                        help="at most N train examples of each trained source (0: all)")
    parser.add_argument("--seed", type=int, default=0, help="the sample's seed")
    parser.add_argument("--previous", metavar="FILE",
                        help="an earlier Fisher file, added decayed (online EWC)")
    parser.add_argument("--decay", type=float, default=1.0,
                        help="the earlier estimate's factor (1: the sum of every task's Fisher)")
    parser.add_argument("--rows-per-pass", type=int, default=8, metavar="R",
                        help="per-example gradients taken R rows at a time (memory: R copies "
                             "of the trainable parameters)")
    parser.add_argument("--out", help="the file to write (default WORKDIR/fisher.safetensors)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing file")


def run(args: argparse.Namespace) -> int:
    from ftjax.train.fisher import estimate_fisher

    try:
        path = estimate_fisher(args.workdir, max_examples=args.examples or None, seed=args.seed,
                               previous=args.previous, decay=args.decay, out=args.out,
                               overwrite=args.overwrite, rows_per_pass=args.rows_per_pass)
    except (*user_errors(), ValueError, OSError) as err:
        return fail("fisher", err)
    print(f"wrote {path}")
    return 0
