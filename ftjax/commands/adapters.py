"""`ftjax adapters list|add|remove STORE ...`: manage a store of adapters for one base.

  ftjax adapters list runs/multitask/adapters
  ftjax adapters add my-adapters spam runs/spam          # a run dir or an adapter dir
  ftjax adapters remove my-adapters spam

A store (ftjax.io.adapter_store) is a directory of named adapters for one base; `ftjax
generate --adapter-store STORE` serves all of them in one batch.
"""

from __future__ import annotations

import argparse

from ftjax.commands.errors import fail, user_errors


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="the store's adapters: method, size, base")
    listing.add_argument("store", metavar="STORE")
    add = actions.add_parser("add", help="copy an adapter into the store under a name")
    add.add_argument("store", metavar="STORE")
    add.add_argument("name", metavar="NAME")
    add.add_argument("adapter", metavar="DIR", help="an adapter directory or a run directory")
    add.add_argument("--overwrite", action="store_true", help="replace an adapter of that name")
    remove = actions.add_parser("remove", help="delete an adapter from the store")
    remove.add_argument("store", metavar="STORE")
    remove.add_argument("name", metavar="NAME")


def run(args: argparse.Namespace) -> int:
    from ftjax.io import adapter_store

    try:
        if args.action == "list":
            entries = adapter_store.list_store(args.store)
            print(f"{'name':<20} {'method':<10} {'params':>12} {'MiB':>8} {'step':>6}  base")
            for e in entries:
                print(f"{e.name:<20} {e.method:<10} {e.num_params:>12,} "
                      f"{e.num_bytes / 2**20:>8.3f} {e.step if e.step is not None else '-':>6}"
                      f"  {e.base}")
            print(f"{len(entries)} adapters, {sum(e.num_bytes for e in entries) / 2**20:.3f} MiB")
        elif args.action == "add":
            entry = adapter_store.add_to_store(args.store, args.name, args.adapter,
                                               overwrite=args.overwrite)
            print(f"added {entry.name} ({entry.method}, {entry.num_params:,} parameters) to "
                  f"{args.store}")
        else:
            adapter_store.remove_from_store(args.store, args.name)
            print(f"removed {args.name} from {args.store}")
    except (*user_errors(), ValueError, OSError) as err:
        return fail(f"adapters {args.action}", err)
    return 0
