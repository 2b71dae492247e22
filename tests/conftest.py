"""Shared fixtures: a tiny BERT checkpoint directory and a tiny learnable text task on disk.

They let the training tests run the real code path (load_pretrained -> data pipeline -> loop ->
orbax) in seconds, without the 90 MB real checkpoints.
"""

import atexit
import json
import os
import random
import shutil
import tempfile

# Tests compile many small programs and run each briefly: XLA's CPU backend optimizations cost
# more compile time than they save. Set before jax is imported anywhere in the session.
_FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE}".strip()

import jax  # noqa: E402
import pytest  # noqa: E402

from ftjax.parallel.compile_cache import ENV as COMPILE_CACHE_ENV  # noqa: E402
from ftjax.parallel.compile_cache import enable_compile_cache  # noqa: E402

# One persistent compilation cache for the session, shared by the xdist workers (they inherit
# the variable from the controller, which loads this file before it starts them) and by the
# `ftjax` processes the tests start: many tests build a program another test already compiled
# (a second Trainer of one config, a resume, the same tiny model), and a hit skips XLA.
# Measured on 2 cores: tests/test_train_loop.py 86 s -> 69 s from an empty cache.
if COMPILE_CACHE_ENV not in os.environ:
    os.environ[COMPILE_CACHE_ENV] = tempfile.mkdtemp(prefix="ftjax-tests-xla-")
    atexit.register(shutil.rmtree, os.environ[COMPILE_CACHE_ENV], ignore_errors=True)
if enable_compile_cache() is not None:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.3)

POSITIVE = ["good", "great", "fine", "lovely", "superb", "fun", "bright", "warm"]
NEGATIVE = ["bad", "awful", "dull", "poor", "boring", "grim", "cold", "weak"]
NEUTRAL = ["the", "film", "plot", "was", "a", "an", "actor", "scene", "story", "and", "very",
           "quite", "it", "movie", "cast", "ending"]
WORDS = POSITIVE + NEGATIVE + NEUTRAL


def make_tiny_tokenizer():
    import tokenizers
    from tokenizers import models, pre_tokenizers, processors

    from ftjax.io.tokenizer import Tokenizer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {t: i for i, t in enumerate(specials + WORDS)}
    backend = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(specials)
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    return Tokenizer(backend, name="tiny-words", special_tokens={
        "pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
        "mask_token": "[MASK]", "bos_token": "[CLS]", "eos_token": "[SEP]",
    })


def make_sentences(n: int, seed: int) -> list[dict]:
    """Sentences whose label is which sentiment word they contain: learnable, not trivial."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        cue = rng.choice(POSITIVE if label else NEGATIVE)
        words = rng.choices(NEUTRAL, k=rng.randint(2, 9))
        words.insert(rng.randint(0, len(words)), cue)
        rows.append({"text": " ".join(words), "label": label})
    return rows


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    from ftjax.io import save_hf
    from ftjax.models import HeadConfig, Model, init_params, preset

    cfg = preset("tiny-bert")
    params = init_params(Model(cfg, HeadConfig("none")), jax.random.key(0))
    out = tmp_path_factory.mktemp("tiny_bert")
    save_hf(cfg, params, out, tokenizer=make_tiny_tokenizer())
    return out


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A tiny Llama checkpoint whose tokenizer is the word-level one (EOS = [SEP])."""
    import dataclasses

    from ftjax.io import save_hf
    from ftjax.models import Model, init_params, preset

    cfg = dataclasses.replace(preset("tiny-llama"), bos_token_id=2, eos_token_id=3,
                              pad_token_id=0)
    params = init_params(Model(cfg), jax.random.key(0))
    out = tmp_path_factory.mktemp("tiny_llama")
    save_hf(cfg, params, out, tokenizer=make_tiny_tokenizer())
    return out


@pytest.fixture(scope="session")
def tiny_text_data(tmp_path_factory):
    """jsonl files data/{train,validation,test}.jsonl; returns the path pattern."""
    root = tmp_path_factory.mktemp("data")
    for split, n, seed in (("train", 96, 0), ("validation", 40, 1), ("test", 40, 2)):
        with open(root / f"{split}.jsonl", "w") as f:
            for row in make_sentences(n, seed):
                f.write(json.dumps(row) + "\n")
    return str(root / "{split}.jsonl")


def write_tiny_config(path, tiny_bert_dir, tiny_text_data, **settings):
    """An experiment file training tiny BERT on the tiny task, 12 steps; returns its path.
    settings: further assignments, `data__buckets=(7, 10)` for `c.data.buckets = (7, 10)`."""
    extra = "".join(f"    c.{name.replace('__', '.')} = {value!r}\n"
                    for name, value in settings.items())
    path.write_text(f'''
from ftjax.train.config import base_config


def get_config():
    c = base_config()
    c.model.name = {str(tiny_bert_dir)!r}
    c.data.source = "local"
    c.data.path = {tiny_text_data!r}
    c.head.kind = "sequence"
    c.head.num_labels = 2
    c.head.pooling = "cls"
    c.task.max_length = 16
    c.steps = 12
    c.batch_size = 8
    c.eval_batch_size = 16
    c.eval_every = 6
    c.checkpoint_every = 6
    c.log_every = 1
    c.optimizer.learning_rate = 3e-3
    c.optimizer.schedule = "constant"
    c.optimizer.weight_decay = 0.0
{extra}    return c
''')
    return path


@pytest.fixture
def tiny_config_file(tmp_path, tiny_bert_dir, tiny_text_data):
    return write_tiny_config(tmp_path / "tiny_experiment.py", tiny_bert_dir, tiny_text_data)


def finished_run(tmp_path_factory, tiny_bert_dir, tiny_text_data, overrides):
    """(config, workdir) of one tiny run trained with `overrides`, for a module's tests to copy
    (copy_run) and change."""
    from ftjax.train.config import load_config
    from ftjax.train.loop import train

    root = tmp_path_factory.mktemp("finished")
    config = write_tiny_config(root / "experiment.py", tiny_bert_dir, tiny_text_data)
    train(load_config(config, overrides), root / "run", quiet=True)
    return config, root / "run"


def copy_run(run, tmp_path):
    """A copy of a finished_run's directory for one test to change."""
    import shutil

    config, source = run
    shutil.copytree(source, tmp_path / "run")
    return config, tmp_path / "run"


# The files that take longest (real models, several processes), run first: `make test` hands
# whole files to two workers in collection order, so a long file collected last would keep
# one worker busy after the other has run out of work.
LONGEST_FIRST = ("test_multiprocess.py", "test_methods_polarity.py", "test_gemma3.py",
                 "test_distillation.py", "test_distill_polarity.py", "test_translation.py",
                 "test_dapt.py", "test_instruct.py", "test_extractive_qa.py",
                 "test_parallel.py", "test_smollm2_lora_peft.py", "test_hyperformer.py",
                 "test_ewc.py", "test_continual.py", "test_train_loop.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole
