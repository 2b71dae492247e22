"""Trainer hooks (protocol: ftjax.train.hooks.base) and the default set a config implies."""

from __future__ import annotations

from ftjax.train.hooks.base import NOTHING, Gathering, Hook, Request, StepMetrics, fetch_all
from ftjax.train.hooks.metrics_log import MetricsLog, StepClock
from ftjax.train.hooks.nonfinite import NonFinite, NonFiniteLossError
from ftjax.train.hooks.pseudo_perplexity import PseudoPerplexity
from ftjax.train.hooks.replay import ReplayRecorder
from ftjax.train.hooks.results import FinalReport
from ftjax.train.hooks.robustness import RobustnessEval
from ftjax.train.hooks.schedules import CheckpointEvery, EvalEvery, Every
from ftjax.train.hooks.selection import BestCheckpoint, EarlyStopping, MetricTracker
from ftjax.train.hooks.signals import StopOnSignal
from ftjax.train.hooks.unfreeze import UnfreezeReport
from ftjax.data.replay import ReplayConfig
from ftjax.settings.blocks import from_config
from ftjax.train.robustness import RobustnessConfig
from ftjax.utils.imports import import_object

__all__ = [
    "NOTHING", "BestCheckpoint", "CheckpointEvery", "EarlyStopping", "EvalEvery", "Every",
    "FinalReport", "Gathering",
    "Hook", "MetricTracker", "MetricsLog", "NonFinite", "NonFiniteLossError",
    "PseudoPerplexity", "ReplayRecorder", "Request", "RobustnessEval",
    "StepClock", "StepMetrics", "StopOnSignal", "UnfreezeReport", "default_hooks", "fetch_all",
    "hooks_from_config",
]

HOOK_METHODS = ("on_start", "on_step_end", "on_eval", "on_checkpoint", "on_end")


def default_hooks(cfg) -> list[Hook]:
    """What a run config asks for, in the order the Trainer calls them: logging first (it
    fetches the metrics once for the others), then signals and non-finite checks, the
    schedules, selection (best checkpoint before early stopping), the unfreeze report, and the
    final report last (it reports the parameters the others kept)."""
    hooks: list[Hook] = [
        MetricsLog(cfg.log_every, cfg.steps),
        StopOnSignal(),
        NonFinite(cfg.nonfinite, cfg.log_every, cfg.steps),
        EvalEvery(cfg.eval_every, cfg.steps, at_start=cfg.eval_at_start),
        CheckpointEvery(cfg.checkpoint_every, cfg.steps),
    ]
    robustness = from_config(RobustnessConfig, cfg.get("robustness"), "robustness")
    if robustness.enabled:  # its metrics join the evaluated splits' results
        hooks.append(RobustnessEval(robustness))
    replay = from_config(ReplayConfig, cfg.get("replay"), "replay")
    if replay.enabled:
        hooks.append(ReplayRecorder(replay))
    if cfg.best_metric:
        split, mode = cfg.eval_splits[0], cfg.best_mode
        hooks.append(BestCheckpoint(split, cfg.best_metric, mode, cfg.early_stopping.min_delta))
        if cfg.early_stopping.patience:
            hooks.append(EarlyStopping(split, cfg.best_metric, mode, cfg.early_stopping.patience,
                                       cfg.early_stopping.min_delta))
    hooks += [UnfreezeReport(), FinalReport(cfg.save_adapter)]
    return hooks


def make_hook(target: str):
    """A hook named 'module:Name': a Hook class (made with no arguments) or a function that
    returns one."""
    hook = import_object(target, "hook")()
    if not any(hasattr(hook, name) for name in HOOK_METHODS):
        raise ValueError(f"hook {target!r} made {hook!r}, which has none of {HOOK_METHODS}")
    return hook


def hooks_from_config(cfg) -> list[Hook]:
    """The config's own hooks (`hooks`), made in order."""
    return [make_hook(target) for target in cfg.hooks]
