"""`ftjax pipeline FILE --workdir ROOT`: train a pipeline's stages in order (ftjax.train.stages)."""

from __future__ import annotations

import json
import sys

from ftjax.commands.errors import fail, user_errors


def add_arguments(parser) -> None:
    parser.add_argument("config", help="pipeline file (defines get_stages and get_config)")
    parser.add_argument("--workdir", required=True,
                        help="root directory: each stage runs in WORKDIR/<stage>; finished "
                             "stages are kept and not run again")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key of every stage (repeatable)")
    parser.add_argument("--only", action="append", default=[], metavar="STAGE",
                        help="train only this stage (repeatable); the stage it starts from "
                             "must have finished")
    parser.add_argument("--restart", action="append", default=[], metavar="STAGE",
                        help="train this stage again from its start (repeatable): its "
                             "workdir is moved to STAGE.before-restart-N, never deleted")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--record", action="store_true",
                        help="write every stage's figures and each group's mean and std to "
                             "experiments/results/<pipeline>.json")


def run(args) -> int:
    from ftjax.train.loop import NonFiniteLossError
    from ftjax.train.record import write_pipeline_record
    from ftjax.train.stages import run_stages, write_report

    try:
        summary = run_stages(args.config, args.workdir, overrides=args.set, quiet=args.quiet,
                             only=args.only, restart=args.restart)
    except user_errors() as err:
        return fail("pipeline", err)
    except NonFiniteLossError as err:
        print(f"ftjax pipeline: {err}", file=sys.stderr)
        return 1
    if args.record and summary["stages"]:
        path = write_pipeline_record(args.config, summary, ["ftjax", *sys.argv[1:]])
        print(f"ftjax pipeline: recorded in {path}"
              + (" (the finished stages only)" if "interrupted" in summary else ""),
              file=sys.stderr)
        for written in write_report(args.config, json.loads(path.read_text()),
                                    path.with_suffix("")):
            print(f"ftjax pipeline: wrote {written}", file=sys.stderr)
    if "interrupted" in summary:
        print(f"ftjax pipeline: interrupted in stage {summary['interrupted']!r}; run the same "
              f"command again to resume", file=sys.stderr)
        return 130
    print(json.dumps(summary["groups"] or summary["stages"], indent=2))
    return 0
