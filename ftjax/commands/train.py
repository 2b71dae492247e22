"""`ftjax train CONFIG --workdir DIR [--set key=value ...]`: run (or resume) an experiment."""

from __future__ import annotations

import json
import sys

from ftjax.commands.errors import USAGE_ERROR, fail, user_errors


def add_arguments(parser) -> None:
    parser.add_argument("config", help="experiment file under experiments/ (defines get_config)")
    parser.add_argument("--workdir", required=True,
                        help="run directory; an existing one with checkpoints is resumed")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (repeatable), e.g. --set optimizer.learning_rate=1e-4")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--record", action="store_true",
                        help="write the finished run's figures, command, seed, steps, wall "
                             "time and machine to experiments/results/<experiment>.json")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="resume even though the config changes what is trained (method, "
                             "model, data, optimizer ...); by default such a resume is refused")
    parser.add_argument("--allow-inexact-resume", action="store_true",
                        help="resume from a checkpoint without this process's data position "
                             "(the input stream restarts)")
    add_distributed_argument(parser)


def add_distributed_argument(parser) -> None:
    group = parser.add_argument_group(
        "multi-host", "one process per host (or per GPU); jax.distributed.initialize() runs first")
    group.add_argument("--distributed", action="store_true",
                       help="initialize with what jax detects (SLURM, Open MPI, TPU pods, "
                            "Kubernetes); also set by FTJAX_DISTRIBUTED=1")
    group.add_argument("--coordinator-address", metavar="HOST:PORT",
                       help="process 0's address (default: detected, or JAX_COORDINATOR_ADDRESS)")
    group.add_argument("--num-processes", type=int, metavar="N",
                       help="how many processes take part (needed outside a detected cluster)")
    group.add_argument("--process-id", type=int, metavar="I",
                       help="this process's index, 0 .. N-1 (needed outside a detected cluster)")


def init_distributed(args) -> bool:
    """Before anything touches a device: jax.distributed.initialize() when asked for (by
    --distributed, FTJAX_DISTRIBUTED, or any of the explicit multi-host arguments). False,
    having said why, when the set-up is incomplete or wrong: the command then exits with 2."""
    from ftjax.parallel import distributed_requested, initialize_distributed

    explicit = {"coordinator_address": args.coordinator_address,
                "num_processes": args.num_processes, "process_id": args.process_id}
    if distributed_requested(args.distributed) or any(v is not None for v in explicit.values()):
        try:
            initialize_distributed(**explicit)
        except ValueError as err:  # jax's "Number of processes must be defined", a bad id
            print(f"ftjax {args.command}: multi-host set-up: {err}", file=sys.stderr)
            return False
    return True


def run(args) -> int:
    if not init_distributed(args):
        return USAGE_ERROR
    from ftjax.train.config import load_config
    from ftjax.train.loop import NonFiniteLossError, train
    from ftjax.train.record import write_record

    try:
        cfg = load_config(args.config, args.set)
        result = train(cfg, args.workdir, quiet=args.quiet,
                       allow_config_change=args.allow_config_change,
                       allow_inexact_resume=args.allow_inexact_resume)
    except user_errors() as err:
        return fail("train", err)
    except NonFiniteLossError as err:
        print(f"ftjax train: {err}", file=sys.stderr)
        return 1
    if result.interrupted:
        return 130
    if args.record:
        path = write_record(args.config, result, cfg, ["ftjax", *sys.argv[1:]])
        print(f"ftjax train: recorded in {path}", file=sys.stderr)
    print(json.dumps({"final_step": result.final_step, "best_step": result.best_step,
                      "eval": result.eval, "train_tokens_per_s": round(result.train_tokens_per_s),
                      "wall_s": round(result.wall_s, 1)}, indent=2))
    return 0
