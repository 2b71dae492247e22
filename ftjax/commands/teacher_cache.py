"""`ftjax teacher-cache CONFIG (--workdir TEACHER_RUN | --pretrained) --out DIR`: a teacher's
outputs on every record of a source's train split, written as a teacher cache that a student's
run reads with its data (`sources.<name>.teacher_cache: DIR`, and a `kd` term without a
teacher). The teacher is a finished run, or CONFIG's pretrained language model as loaded.

  ftjax teacher-cache experiments/polarity_minilm.py --workdir runs/teacher \\
      --out caches/polarity_teacher
  ftjax teacher-cache experiments/instruct_smollm2.py --pretrained --top-k 16 \\
      --set task.packing=False --out caches/smollm2_top16

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
    teacher = parser.add_mutually_exclusive_group(required=True)
    teacher.add_argument("--workdir", help="the teacher run's directory")
    teacher.add_argument("--pretrained", action="store_true",
                         help="the teacher is CONFIG's model as loaded, untrained (a pretrained "
                              "language model with its own LM head)")
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
    from ftjax.train.restore import build_run_experiment, restore_run

    try:
        if Path(args.out).exists() and not args.overwrite:  # before any model is loaded
            raise FileExistsError(f"{args.out} exists: choose a new path, or pass --overwrite")
        cfg = load_config(args.config, args.set)
        if args.pretrained:
            if cfg.head.kind not in ("lm", "mlm"):
                raise ValueError(f"--pretrained: a {cfg.head.kind!r} head would be new, not "
                                 f"trained; train a teacher run and pass --workdir")
            exp = build_run_experiment(cfg, roles=ROLES)
            params, step = exp.params, 0
            teacher = {"pretrained": cfg.model.name, "method": cfg.method,
                       "dtype": cfg.model.dtype}
        else:
            exp, restored = restore_run(args.workdir, best=args.best, cfg=cfg, roles=ROLES)
            params, step = restored.state.params, int(restored.step)
            teacher = {"workdir": str(Path(args.workdir).resolve()), "step": step,
                       "checkpoint": "best" if args.best else "latest",
                       "dtype": cfg.model.dtype}
        names = [s.name for s in exp.sources]
        name = args.source or names[0]
        if name not in names:
            raise ValueError(f"--source {name!r}: the teacher's sources are {names}")
        source = exp.sources[names.index(name)]
        path = write_teacher_cache(exp.model, params, exp.tokenizer, source,
                                   args.out, teacher=teacher, split=args.split,
                                   top_k=args.top_k, batch_size=args.batch_size,
                                   overwrite=args.overwrite)
    except (*user_errors(), ValueError, OSError) as err:
        return fail("teacher-cache", err)
    print(f"wrote the teacher's outputs (step {step}) on {len(source.splits[args.split])} "
          f"records of {name} {args.split} to {path}")
    return 0
