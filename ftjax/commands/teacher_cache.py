"""`ftjax teacher-cache CONFIG --workdir TEACHER_RUN --out DIR`: a teacher run's outputs on
every record of a source's train split, written as a teacher cache that a student's run reads
with its data (`sources.<name>.teacher_cache: DIR`, and a `kd` term without a teacher).

  ftjax teacher-cache experiments/polarity_teacher.py --workdir runs/teacher \\
      --out caches/polarity_teacher
  ftjax teacher-cache experiments/dapt_clm_smollm2.py --workdir runs/lm_teacher \\
      --top-k 16 --out caches/lm_top16

The records are the teacher's source (CONFIG with --set changes them), rendered as the teacher's
run renders them (ftjax.generate.teacher_cache). Interrupted, the same command continues where
it stopped (the parts written so far are kept in OUT.partial); another teacher or other data
refuses to continue it.
"""

from __future__ import annotations

import argparse

from ftjax.commands.errors import fail, user_errors


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="the teacher run's experiment file")
    parser.add_argument("--workdir", required=True, help="the teacher run's directory")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change the teacher's config (its data)")
    parser.add_argument("--source", help="the source whose records are cached (default: the "
                                         "first)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--out", required=True, help="the cache directory to write")
    parser.add_argument("--top-k", type=int, default=0, metavar="K",
                        help="keep each item's K largest logits (0: all of them; per-token "
                             "language-model caches want a K such as 16)")
    parser.add_argument("--batch-size", type=int, default=32, metavar="B")
    parser.add_argument("--best", action="store_true", help="the best checkpoint, not the latest")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ftjax.data import ROLES
    from ftjax.generate.teacher_cache import write_teacher_cache
    from ftjax.train.config import load_config
    from ftjax.train.restore import restore_run

    try:
        if Path(args.out).exists() and not args.overwrite:  # before any model is loaded
            raise FileExistsError(f"{args.out} exists: choose a new path, or pass --overwrite")
        cfg = load_config(args.config, args.set)
        exp, restored = restore_run(args.workdir, best=args.best, cfg=cfg, roles=ROLES)
        names = [s.name for s in exp.sources]
        name = args.source or names[0]
        if name not in names:
            raise ValueError(f"--source {name!r}: the teacher's sources are {names}")
        source = exp.sources[names.index(name)]
        teacher = {"workdir": str(Path(args.workdir).resolve()), "step": int(restored.step),
                   "checkpoint": "best" if args.best else "latest",
                   "dtype": cfg.model.dtype}
        path = write_teacher_cache(exp.model, restored.state.params, exp.tokenizer, source,
                                   args.out, teacher=teacher, split=args.split,
                                   top_k=args.top_k, batch_size=args.batch_size,
                                   overwrite=args.overwrite)
    except (*user_errors(), ValueError, OSError) as err:
        return fail("teacher-cache", err)
    print(f"wrote the teacher's outputs (step {restored.step}) on {len(source.splits[args.split])} "
          f"records of {name} {args.split} to {path}")
    return 0
