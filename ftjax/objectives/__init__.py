"""Loss terms: the step minimizes a weighted sum of named terms (ftjax.objectives.term).

Built-in: `ce` / `lm` / `mlm` / `span` (the task's loss, ftjax.objectives.cross_entropy, .span),
the penalties `l1`, `l2`, `l2_sp` (.penalties), distillation `kd`, `kd_hidden`, `kd_attention`
(.distill), adversarial training on embeddings `fgm`, `pgd`, `freelb`, `smart`
(.adversarial), augmentation inside the step: `mixup` of pooled representations (.mixup)
and span `cutoff` (.cutoff), and self-paced learning `self_paced` (.self_paced: the rows the
model finds hard leave the task loss).
"""

from ftjax.objectives.cross_entropy import (
    TASK_TERMS,
    CrossEntropy,
    CrossEntropyConfig,
    weighted_cross_entropy,
)
from ftjax.objectives.penalties import L1, L2, L2SP, RegularizerConfig, l1, l2, l2sp
from ftjax.objectives.registry import (
    TERMS,
    entry_config_class,
    loss_for_task,
    make_term,
    term_class,
)
from ftjax.objectives.span import SpanCrossEntropy
from ftjax.objectives.task_term import TaskTerm
from ftjax.objectives.term import (
    LossTerm,
    TermConfig,
    TermContext,
    TermSetup,
    TermValue,
)

__all__ = [
    "L1", "L2", "L2SP", "TASK_TERMS", "TERMS", "CrossEntropy", "CrossEntropyConfig", "LossTerm",
    "RegularizerConfig", "SpanCrossEntropy", "TaskTerm", "TermConfig", "TermContext", "TermSetup", "TermValue",
    "entry_config_class", "l1", "l2", "l2sp", "loss_for_task", "make_term", "term_class",
    "weighted_cross_entropy",
]
