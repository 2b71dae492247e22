"""SmolLM2-135M-Instruct on sentence polarity as instruction following: label words, LM head.

Run:
  ftjax train experiments/polarity_smollm2.py --workdir workdirs/polarity_smollm2
  ftjax train experiments/polarity_smollm2.py --workdir workdirs/smollm2_lora --set method=lora

Each sentence becomes a user turn of SmolLM2's chat template ("Review: ...\nIs this review
positive or negative? Answer with one word.") followed by the assistant prompt; the class logits
are the LM's logits of "negative" and "positive" as the assistant's first token: a verbalizer
head initialized from the tied embedding's rows of those two tokens, so step 0 is the zero-shot
model. Same data and split as experiments/polarity_minilm.py (8,455 / 1,057 / 1,056).

The prompt takes 36 tokens (a short system prompt instead of the template's default one, which
is ~10 tokens longer); max length 96 leaves 60 for the sentence, which keeps every sentence of a
sample of 2,000 training sentences whole (at 64, 64% of them). "Answer with one word." matters:
zero-shot (step 0) validation accuracy on a random 128 validation sentences at max length 96
was 0.70 with it and 0.48 without it (measured with build_experiment + evaluate, no training).
"""

from ftjax.train.config import base_config


def get_config():
    c = base_config()
    c.model.name = "smollm2-135m-instruct"
    c.head.kind = "verbalizer"
    c.head.num_labels = 2
    c.head.pooling = "last"  # the assistant prompt's last token: where the answer is predicted
    c.task.kind = "classification"
    c.task.template = "Review: {text}\nIs this review positive or negative? Answer with one word."
    c.task.chat = True
    c.task.system_prompt = "You are a helpful assistant."
    c.task.label_words = ("negative", "positive")  # label 0, label 1
    c.task.max_length = 96
    c.data.source = "polarity"
    c.method = "full"
    c.steps = 400
    c.batch_size = 16
    c.eval_batch_size = 64
    c.eval_every = 100
    c.checkpoint_every = 200
    c.log_every = 20
    c.optimizer.learning_rate = 2e-5
    c.optimizer.warmup_steps = 40
    c.optimizer.schedule = "linear"
    return c
