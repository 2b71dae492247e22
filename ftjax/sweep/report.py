"""The sweep's outputs: one table as Markdown, CSV and JSON, and two plots as PNG.

Files, named by the sweep so links to them stay valid across reruns:
  <name>.md                        a table per task variant, the device, the protocol
  <name>.csv                       one row per (task, method)
  <name>.json                      the rows and every run's record
  <name>_accuracy_vs_share.png     test accuracy against the trainable share (log axis)
  <name>_accuracy_vs_wall_time.png test accuracy against the wall time of a run
Plots use matplotlib's object API with the Agg canvas: no display, no global pyplot state.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from ftjax.sweep.plan import UNTRAINED, Sweep

CSV_COLUMNS = ("task", "model", "method", "status", "trainable", "total", "trainable_share",
               "test_accuracy_mean", "test_accuracy_std", "n", "lr", "delta_bytes",
               "step_time_s", "memory_bytes", "memory_kind", "wall_s")


def output_paths(out_dir: Path, name: str) -> dict[str, Path]:
    out_dir = Path(out_dir)
    return {"md": out_dir / f"{name}.md", "csv": out_dir / f"{name}.csv",
            "json": out_dir / f"{name}.json",
            "share_png": out_dir / f"{name}_accuracy_vs_share.png",
            "wall_png": out_dir / f"{name}_accuracy_vs_wall_time.png"}


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _share(x: float) -> str:
    """Enough digits that tiny shares (a 2-row head of 135M parameters) do not read as 0."""
    pct = 100 * x
    if pct == 0:
        return "0%"
    if pct >= 10:
        return f"{pct:.1f}%"
    digits = max(2, 1 - math.floor(math.log10(pct)))
    return f"{pct:.{digits}f}%"


def _accuracy(row: dict) -> str:
    mean, std = row.get("test_accuracy_mean"), row.get("test_accuracy_std")
    if mean is None:
        return row["status"]
    spread = f" ± {std:.4f}" if std is not None else ""
    return f"{mean:.4f}{spread} (n={row['n']})"


def _seconds(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s" if s < 10 else f"{s:.0f} s"


def _other_seeds(seeds: int) -> str:
    if seeds < 2:
        return ""
    listed = ", ".join(str(s) for s in range(1, seeds))
    return f"; seed{'s' * (seeds > 2)} {listed} train{'s' * (seeds == 2)} at it"


def markdown(sweep: Sweep, rows: list[dict], devices: list[str]) -> str:
    kinds = sorted({r["memory_kind"] for r in rows if r.get("memory_kind")})
    memory_header = " / ".join(kinds) if kinds else "memory"
    lines = [
        f"# {sweep.name}",
        "",
        f"Produced by `ftjax sweep {sweep.source}`. Device: {'; '.join(devices) or 'unknown'}.",
        "",
        f"Protocol: per task and method, seed 0 trains once per learning rate of its grid; the "
        f"rate with the best validation accuracy is chosen{_other_seeds(sweep.seeds)}. Test "
        f"accuracy is the mean ± sample std over the {sweep.seeds} seed(s) at the chosen "
        f"rate. Trainable: parameters that train at some step (share of all). Checkpoint delta: "
        f"bytes of the trainable parameters a checkpoint stores (optimizer state not counted). "
        f"Step time: median wall time of a train step after compilation. Memory: "
        f"{memory_header}. Wall time: one whole run (setup, compile, training, evaluation), "
        f"mean over the seeds.",
    ]
    if any(r["method"] == UNTRAINED for r in rows):
        lines[-1] += (f" Row `{UNTRAINED}`: the model exactly as a run sets it up (pretrained "
                      f"weights; the task head as initialized, random for a new head, the "
                      f"zero-shot answer for a verbalizer head), evaluated before any step.")
    header = ("method", "trainable params", "share", "test accuracy", "lr (grid)",
              "checkpoint delta", "step time", memory_header, "wall time")
    for task in sweep.tasks:
        mine = [r for r in rows if r["task"] == task.name]
        model = next((r["model"] for r in mine if r.get("model")), "")
        lines += ["", f"## {task.name}" + (f": {model}" if model else ""), "",
                  f"Experiment: `{Path(task.experiment).name}` with "
                  f"{', '.join(f'`{o}`' for o in task.overrides) or 'no overrides'}.", "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in mine:
            grid = ", ".join(f"{lr:.3g}" for lr in r["grid"])
            chosen = f"{r['lr']:.3g} ({grid})" if r["lr"] is not None else (
                f"- ({grid})" if grid else "-")
            if r.get("trainable") is None:
                cells = [r["method"], "-", "-", _accuracy(r), chosen, "-", "-", "-", "-"]
            else:
                cells = [r["method"], f"{r['trainable']:,}", _share(r["trainable_share"]),
                         _accuracy(r), chosen, human_bytes(r["delta_bytes"]),
                         _seconds(r["step_time_s"]), human_bytes(r["memory_bytes"]),
                         _seconds(r["wall_s"])]
            lines.append("| " + " | ".join(cells) + " |")
        failed = [run for r in mine for run in r["failed_runs"]]
        if failed:
            lines += ["", "Failed runs (error in their result.json): " + ", ".join(failed)]
        notes = [note for r in mine for note in _notes(r, mine)]
        if notes:
            lines += ["", *notes]
    return "\n".join(lines) + "\n"


def _notes(row: dict, rows: list[dict]) -> list[str]:
    """What a reader must know about a row: a chosen rate at an end of the rates searched (not
    bracketed), a mean below the untrained model's and why (validation at every rate), and
    where training stopped (steps kept by validation, out of those run)."""
    notes = []
    method = f"`{row['method']}`"
    if row.get("lr_at_edge"):
        rates = ", ".join(f"{lr:.3g}" for lr in row["grid"])
        notes.append(f"- {method}: the best rate, {row['lr']:.3g}, is at an end of the rates "
                     f"searched ({rates}); the search did not bracket the optimum.")
    if row.get("below_untrained"):
        base = next(r for r in rows if r["method"] == UNTRAINED)
        by_lr = ", ".join(f"{lr}: {acc:.4f}" for lr, acc in row["validation_by_lr"].items()
                          if acc is not None)
        kept = ", ".join(f"{b} of {f}" for b, f in zip(row.get("best_steps") or [],
                                                       row.get("final_steps") or []))
        notes.append(
            f"- {method} ends below the untrained model ({row['test_accuracy_mean']:.4f} vs "
            f"{base['test_accuracy_mean']:.4f} test): validation accuracy by rate {by_lr}, the "
            f"untrained model's {base.get('validation_accuracy') or float('nan'):.4f}; steps "
            f"kept by validation / run per seed: {kept or '-'}.")
    return notes


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k) for k in CSV_COLUMNS})


def _plot(path: Path, rows: list[dict], x_key: str, x_label: str, title: str, *,
          log_x: bool, x_scale: float = 1.0) -> None:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("the sweep's plots need matplotlib: pip install -e '.[sweep]' (the "
                          "tables are written already)") from None

    fig = Figure(figsize=(8, 5.5), layout="constrained")
    ax = fig.subplots()
    for i, task in enumerate(dict.fromkeys(r["task"] for r in rows)):
        scored = [r for r in rows
                  if r["task"] == task and r.get("test_accuracy_mean") is not None]
        for r in scored:  # nothing trained: a level to compare with, not a point
            if r["method"] == UNTRAINED:
                ax.axhline(r["test_accuracy_mean"], color=f"C{i}", linestyle="--", linewidth=1,
                           label=f"{task} {UNTRAINED}")
        points = [r for r in scored if r["method"] != UNTRAINED and r.get(x_key)]
        if not points:
            continue
        xs = [x_scale * r[x_key] for r in points]
        ys = [r["test_accuracy_mean"] for r in points]
        errs = [r["test_accuracy_std"] or 0.0 for r in points]
        model = points[0].get("model") or task
        ax.errorbar(xs, ys, yerr=errs, fmt="o", capsize=3, color=f"C{i}",
                    label=f"{task} ({model})")
        for x, y, r in zip(xs, ys, points):
            ax.annotate(r["method"], (x, y), textcoords="offset points", xytext=(4, 4),
                        fontsize=8, color=f"C{i}")
    if log_x:
        from matplotlib.ticker import FuncFormatter, NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(x_label)
    ax.set_ylabel("test accuracy (mean ± std over seeds)")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right")
    fig.savefig(path, dpi=120)


def _relative(path: str, base: Path) -> str:
    """`path` relative to `base` where it lies below it, else its file name alone."""
    try:
        return str(Path(path).resolve().relative_to(base))
    except ValueError:
        return Path(path).name


def write_report(sweep: Sweep, rows: list[dict], records: list[dict],
                 out_dir: Path) -> dict[str, Path]:
    paths = output_paths(out_dir, sweep.name)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    devices = sorted({r["device"] for r in records if r.get("device")})
    paths["md"].write_text(markdown(sweep, rows, devices))
    write_csv(paths["csv"], rows)
    # Paths as the sweep file names them (relative to its directory), never the absolute
    # paths of the machine that ran it.
    base = Path(sweep.source.split(":")[0]).resolve().parent
    runs = [{k: _relative(v, base) if k == "experiment" else v for k, v in r.items()
             if k not in ("config", "traceback")} for r in records]
    paths["json"].write_text(json.dumps({
        "name": sweep.name, "source": Path(sweep.source).name, "devices": devices,
        "seeds": sweep.seeds,
        "grids": {f"{t}/{m}": list(g) for (t, m), g in sweep.grids.items()},
        "rows": rows, "runs": runs}, indent=2, default=str) + "\n")
    _plot(paths["share_png"], rows, "trainable_share", "trainable parameters (share of all)",
          f"{sweep.name}: accuracy vs trainable share", log_x=True, x_scale=100.0)
    _plot(paths["wall_png"], rows, "wall_s", "wall time of a run (s)",
          f"{sweep.name}: accuracy vs wall time", log_x=False)
    return paths
