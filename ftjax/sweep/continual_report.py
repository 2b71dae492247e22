"""A continual-learning pipeline's report: per arm, the transfer metrics of its score matrices
over seeds (ftjax.train.continual.transfer_metrics) as a Markdown table, and each arm's
seed-mean matrix drawn as a heatmap (matplotlib's object API on the Agg canvas: no display, no
global pyplot state).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ftjax.train.continual import transfer_metrics
from ftjax.train.stages import mean_std

Matrix = Sequence[Sequence[float]]
TRANSFER_KEYS = ("average", "backward_transfer", "forgetting", "forward_transfer")


def transfer_table(runs: Mapping[str, Sequence[tuple[Matrix, Sequence[float] | None]]], *,
                   average_label: str, digits: int = 4,
                   lower_is_better: bool = False) -> tuple[list[str], dict[str, list[list[float]]]]:
    """Markdown rows (header first) of each arm's transfer metrics, mean ± std over its seeds'
    (matrix, initial scores) pairs, and each arm's seed-mean matrix. Arms without a run are
    left out."""
    header = ["arm", "seeds", average_label, "backward transfer", "forgetting",
              "forward transfer"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    means = {}
    for arm, per_seed in runs.items():
        if not per_seed:
            continue
        found = [transfer_metrics(m, initial, lower_is_better=lower_is_better)
                 for m, initial in per_seed]
        cells = []
        for key in TRANSFER_KEYS:
            mean, std = mean_std([f[key] for f in found])
            cells.append("" if mean is None else f"{mean:.{digits}f} ± {std:.{digits}f}")
        lines.append("| " + " | ".join([arm, str(len(per_seed)), *cells]) + " |")
        size = len(per_seed[0][0])
        means[arm] = [[sum(m[i][j] for m, _ in per_seed) / len(per_seed) for j in range(size)]
                      for i in range(size)]
    return lines, means


def draw_matrices(matrices: Mapping[str, Matrix], tasks: Sequence[str], path: Path, *,
                  digits: int = 2, lower_is_better: bool = False,
                  limits: tuple[float, float] | None = None) -> Path:
    """One heatmap per arm (row i: after stage i; column j: task j), written to `path`. The
    better scores are bright; `limits` fixes the colour scale (default: the values' range)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2.6 * len(matrices), 2.8), layout="constrained")
    axes = fig.subplots(1, len(matrices), squeeze=False)[0]
    values = [v for matrix in matrices.values() for row in matrix for v in row]
    low, high = limits if limits is not None else (min(values), max(values))
    middle = (low + high) / 2
    for ax, (arm, matrix) in zip(axes, matrices.items()):
        ax.imshow(matrix, vmin=low, vmax=high, cmap="viridis_r" if lower_is_better else "viridis")
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                dark = value > middle if lower_is_better else value < middle
                ax.text(j, i, f"{value:.{digits}f}", ha="center", va="center", fontsize=6,
                        color="white" if dark else "black")
        ax.set_title(arm, fontsize=8)
        ax.set_xticks(range(len(tasks)), [t[:4] for t in tasks], fontsize=6)
        ax.set_yticks(range(len(tasks)), [f"after {t[:4]}" for t in tasks], fontsize=6)
    fig.savefig(path, dpi=130)
    return path


def record_matrix(record: dict, stages: Sequence[str], tasks: Sequence[str], metric: str, *,
                  own_model_per_task: bool = False) -> list[list[float]] | None:
    """R[i][j] from a pipeline's record (`metrics["<stage>/test/<task>/<metric>"]`), stages in
    task order; None until every stage has finished. own_model_per_task: see
    ftjax.train.continual.accuracy_matrix."""
    try:
        measured = [[record["metrics"][f"{stage}/test/{task}/{metric}"] for task in tasks]
                    for stage in stages]
    except KeyError:
        return None
    if not own_model_per_task:
        return measured
    return [[measured[j][j] if j <= i else measured[i][j] for j in range(len(tasks))]
            for i in range(len(stages))]


def record_initial(record: dict, first_stage: str, tasks: Sequence[str],
                   metric: str) -> list[float] | None:
    """b[j]: the first stage's test scores at step 0 in a pipeline's record (None without)."""
    rows = record.get("evaluations", {}).get(first_stage, [])
    at_start = {row["split"]: row for row in rows if row.get("step") == 0}
    try:
        return [at_start[f"test/{task}"][metric] for task in tasks]
    except KeyError:
        return None


def sequence_report(record: dict, stem: Path, *, arms: Sequence[str], seeds: Sequence[int],
                    tasks: Sequence[str], metric: str, stage_name: Callable[[str, int, int], str],
                    joint_name: Callable[[int], str], own_model_arms: Sequence[str] = (),
                    average_label: str, note: str, digits: int = 4, cell_digits: int = 2,
                    lower_is_better: bool = False,
                    limits: tuple[float, float] | None = None) -> list[Path]:
    """A task-sequence pipeline's report from its record: <stem>.md (each arm's transfer
    metrics over seeds, and the joint run's mean score) and <stem>.png (each arm's seed-mean
    matrix). stage_name(arm, seed, index) and joint_name(seed) name the stages; digits are the
    table's, cell_digits the heatmap's."""
    runs = {}
    for arm in arms:
        runs[arm] = []
        for seed in seeds:
            names = [stage_name(arm, seed, i) for i in range(len(tasks))]
            matrix = record_matrix(record, names, tasks, metric,
                                   own_model_per_task=arm in own_model_arms)
            if matrix is not None:
                runs[arm].append((matrix, record_initial(record, names[0], tasks, metric)))
    lines, matrices = transfer_table(runs, average_label=average_label, digits=digits,
                                     lower_is_better=lower_is_better)
    joint = [[record["metrics"].get(f"{joint_name(s)}/test/{t}/{metric}") for t in tasks]
             for s in seeds]
    joint = [row for row in joint if None not in row]
    if joint:
        mean, std = mean_std([sum(row) / len(row) for row in joint])
        lines.append(f"| joint | {len(joint)} | {mean:.{digits}f} ± {std:.{digits}f} |  |  |  |")
    markdown = stem.with_suffix(".md")
    markdown.write_text("\n".join(lines) + "\n\n" + note + " " + record.get("machine", "") + "\n")
    if not matrices:
        return [markdown]
    return [markdown, draw_matrices(matrices, tasks, stem.with_suffix(".png"),
                                    digits=cell_digits, lower_is_better=lower_is_better, limits=limits)]


__all__ = ["draw_matrices", "record_initial", "record_matrix", "sequence_report",
           "transfer_table"]
