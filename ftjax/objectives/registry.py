"""Which class a term's `kind` names: a built-in (TERMS) or any importable 'module:Class'.

Adding a built-in term is one file and one line in TERMS. A term of your own needs no change
here: name it in a config as `losses.<name>.kind = "my_module:MyTerm"`, or pass an instance
from Python (`build_experiment(cfg, terms=[MyTerm("name")])`).
"""

from __future__ import annotations

from collections.abc import Mapping

from ftjax.objectives.adversarial import FGM, PGD, SMART, FreeLB
from ftjax.objectives.cross_entropy import CrossEntropy
from ftjax.objectives.cutoff import Cutoff
from ftjax.objectives.distill import AttentionKD, HiddenKD, LogitKD
from ftjax.objectives.ewc import EWC
from ftjax.objectives.gan import GAN
from ftjax.objectives.lwf import LwF
from ftjax.objectives.mixup import Mixup
from ftjax.objectives.penalties import L1, L2, L2SP
from ftjax.objectives.self_paced import SelfPaced
from ftjax.objectives.span import SpanCrossEntropy
from ftjax.objectives.task_loss import loss_for_task
from ftjax.objectives.term import LossTerm
from ftjax.utils.imports import import_object

TERMS: Mapping[str, type[LossTerm]] = {
    "ce": CrossEntropy,
    "lm": CrossEntropy,
    "mlm": CrossEntropy,
    "span": SpanCrossEntropy,
    "l1": L1,
    "l2": L2,
    "l2_sp": L2SP,
    "ewc": EWC,
    "kd": LogitKD,
    "kd_hidden": HiddenKD,
    "kd_attention": AttentionKD,
    "lwf": LwF,
    "fgm": FGM,
    "pgd": PGD,
    "freelb": FreeLB,
    "smart": SMART,
    "mixup": Mixup,
    "cutoff": Cutoff,
    "gan": GAN,
    "self_paced": SelfPaced,
}

__all__ = ["TERMS", "entry_config_class", "entry_kind", "loss_for_task", "make_term",
           "term_class"]


def term_class(kind: str) -> type[LossTerm]:
    """The LossTerm subclass a kind names."""
    if ":" in kind:
        cls = import_object(kind, "loss term")
    elif kind in TERMS:
        cls = TERMS[kind]
    else:
        raise ValueError(f"unknown loss term {kind!r}; built-in: {', '.join(TERMS)}, or give "
                         f"'module:Class'")
    if not (isinstance(cls, type) and issubclass(cls, LossTerm)):
        raise ValueError(f"loss term {kind!r} is {cls!r}, not a LossTerm subclass")
    return cls


def entry_kind(name: str, values: Mapping) -> str:
    """A `losses` entry's kind: its own `kind`, else its name."""
    return values.get("kind") or name


def entry_config_class(name: str, values: Mapping) -> type:
    """The settings block of a `losses` entry (the schema's entry type)."""
    return term_class(entry_kind(name, values)).Config


def make_term(name: str, config) -> LossTerm:
    """The term of a `losses` entry from its built settings block."""
    return term_class(config.kind or name)(name, config)
