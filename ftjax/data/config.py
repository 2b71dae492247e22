"""The data side of a run config: the `task` block (how records become rows) and the `data`
block (where the records come from)."""

from __future__ import annotations

import dataclasses

from ftjax.settings import setting

TASKS = ("classification", "causal_lm", "masked_lm")
SOURCE_KINDS = ("polarity", "local", "hf", "tfds")


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """How records become rows of tokens and labels (ftjax.data.tasks)."""

    kind: str = setting("classification", "classification | causal_lm | masked_lm",
                        choices=TASKS)
    text_key: str = setting("text", "the record field holding the text")
    label_key: str = setting("label", "classification: the record field holding the label")
    text_pair_key: str | None = setting(None, "classification: a second text (sentence pairs)")
    prompt_key: str | None = setting(
        None, "causal_lm: a prompt field; the loss then counts only on the text (target) tokens")
    max_length: int = setting(64, "tokens per row (longer texts are truncated)")
    packing: bool = setting(True, "causal_lm: pack documents whole into rows of max_length")
    mask_prob: float = setting(0.15, "masked_lm: the share of tokens selected for prediction")
    template: str | None = setting(
        None, "classification as instruction following (ftjax.data.prompting): each text goes "
        "into the template at {text}")
    chat: bool = setting(False, "render the template as a user turn of the tokenizer's chat "
                         "template")
    system_prompt: str | None = setting(None, "chat only: the system turn; None: the chat "
                                        "template's default")
    label_words: tuple[str, ...] = setting(
        (), "a verbalizer head scores these words, one per label, each one token after the "
        "prompt")

    def __post_init__(self):
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length}")
        if not 0.0 <= self.mask_prob <= 1.0:
            raise ValueError(f"mask_prob must lie in [0, 1], got {self.mask_prob}")
        if (self.template is not None or self.label_words) and self.kind != "classification":
            raise ValueError(f"template / label_words are for kind='classification', not "
                             f"{self.kind!r}")
        if self.template is not None and self.template.count("{text}") != 1:
            raise ValueError(f"template must contain {{text}} exactly once: {self.template!r}")
        if self.system_prompt is not None and not self.chat:
            raise ValueError("system_prompt applies only with chat=True")
        if self.chat and self.template is None:
            raise ValueError("chat=True renders the template as a chat turn; set template")
        if self.label_words and self.template is None:
            raise ValueError("label_words answer a prompt: set template (with {text})")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the records come from (ftjax.data.sources)."""

    source: str = setting("polarity", "polarity (the bundled corpus) | local (csv / tsv / jsonl "
                          "/ json files) | hf (HF datasets) | tfds", choices=SOURCE_KINDS)
    path: str | None = setting(None, "local: a file, or a pattern with {split}; hf / tfds: the "
                               "dataset's name or path")
    train_split: str = setting("train", "the split (or {split} value) that trains")
    validation_split: str = setting("validation", "the split that selects (eval_splits)")
    test_split: str = setting("test", "the split reported at the end only")
    split_seed: int = setting(0, "the polarity corpus' fixed stratified split, and the draw of "
                              "max_*_examples subsets")
    max_train_examples: int = setting(
        0, "quick runs: n > 0 keeps a random n of the train split (drawn with split_seed, so "
        "every run sees the same subset); 0 keeps it whole")
    max_eval_examples: int = setting(0, "the same for the validation and test splits")

    def __post_init__(self):
        if self.source != "polarity" and not self.path:
            raise ValueError(f"source={self.source!r} needs path")
        for key in ("max_train_examples", "max_eval_examples"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
