"""One entry point for pretrained models: `load_pretrained(name_or_path)`.

Accepts an asset name (ftjax.assets), a `.gguf` file or an HF checkpoint directory (config.json
+ safetensors) and returns the model, its parameters, its tokenizer and where they came from.
`with reuse_checkpoints():` reads each file once for many loads (a sweep's runs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax

from ftjax import assets
from ftjax.io.gguf import open_gguf, read_gguf_checkpoint
from ftjax.io.hf import CONFIG_FILE, read_hf_checkpoint
from ftjax.io.loading import Checkpoint, CheckpointError, fill_params
from ftjax.io.onnx_bert import read_onnx_bert
from ftjax.io.tokenizer import Tokenizer
from ftjax.models import HeadConfig, LlamaConfig, Model, default_compute_dtype
from ftjax.models.layout import to_layout
from ftjax.models.model import replace_head, verbalizer_from_lm

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Pretrained:
    model: Model  # flax module (config + head_config)
    # {"backbone":..., "head":...} plain arrays, in the layout config.scan_layers asks for
    params: dict
    tokenizer: Tokenizer
    source: Path  # the resolved file/dir
    name: str  # the asset name or path given


def pretraining_head(checkpoint: Checkpoint) -> HeadConfig:
    """The head a checkpoint was trained with: next-token LM for Llama, none for BERT encoders."""
    is_decoder = isinstance(checkpoint.config, LlamaConfig)
    return HeadConfig(kind="lm" if is_decoder else "none")


def load_pretrained(
    name_or_path: str | os.PathLike,
    *,
    head: HeadConfig | None = None,
    dtype: str | None = None,
    param_dtype: str = "float32",
    scan_layers: bool = False,
    rng_seed: int = 0,
    label_tokens: Sequence[int] | Callable[[Tokenizer], Sequence[int]] | None = None,
    task_heads: Sequence[tuple[str, HeadConfig]] = (),
) -> Pretrained:
    """Load a pretrained model strictly: every parameter filled, every checkpoint tensor used.

    head: None keeps the pretraining head (`pretraining_head`), as does any head of the same
      kind (e.g. with dropout); another kind discards it (an untied LM head's weights are
      dropped) and initializes the new head from `rng_seed`. A "verbalizer" head is built from
      the LM head instead (`verbalizer_from_lm`, no rng): it needs `label_tokens`.
    dtype: compute dtype; None picks `default_compute_dtype()` (fp32 on CPU, bf16 on GPU).
    param_dtype: storage dtype; checkpoint tensors are cast to it.
    scan_layers: return params stacked for `lax.scan` (the model's config says so too).
    label_tokens: a verbalizer's label-word token ids, or a function of the tokenizer returning
      them (where a word is one token depends on the tokenizer and the prompt: see
      ftjax.data.SequenceClassification.label_token_ids).
    task_heads: (name, HeadConfig) pairs: a multi-task model, one new head per task under
      head/<name>/ (ftjax.models.TaskHeads) from `rng_seed`; `head` must then be None or
      kind "none".
    """
    if task_heads and head is not None and head.kind != "none":
        raise ValueError(f"a model with task heads has no head of its own; got head kind "
                         f"{head.kind!r}")
    start = time.perf_counter()
    source = assets.resolve(name_or_path)
    checkpoint, tokenizer = _read(source, name=str(name_or_path))
    pretrained_head = pretraining_head(checkpoint)
    head = HeadConfig(kind="none") if task_heads else (head or pretrained_head)
    config = checkpoint.config.with_policy(
        dtype=dtype or default_compute_dtype(), param_dtype=param_dtype, scan_layers=False)

    # Fill in the canonical per-layer layout. The same head kind keeps the pretrained weights
    # (an "lm" head with dropout is still the pretrained LM head), and a verbalizer is made from
    # them; another kind is attached afterwards, so its random init never mixes with checkpoint
    # values.
    keeps_head = head.kind in (pretrained_head.kind, "verbalizer") and not task_heads
    model = Model(config, pretrained_head if keeps_head else HeadConfig(kind="none"))
    params = fill_params(model, checkpoint.conversion, where=str(source))
    if head.kind == "verbalizer":
        if pretrained_head.kind != "lm":
            raise CheckpointError(f"{source}: a verbalizer head starts from the LM head's "
                                  f"label-word rows, but this checkpoint has no LM head "
                                  f"(pretraining head {pretrained_head.kind!r})")
        if label_tokens is None:
            raise ValueError("HeadConfig(kind='verbalizer') needs label_tokens= (the label "
                             "words' token ids, or a function of the tokenizer giving them)")
        ids = label_tokens(tokenizer) if callable(label_tokens) else label_tokens
        model, params = verbalizer_from_lm(model, params, head, tuple(int(i) for i in ids))
    elif keeps_head:
        model = Model(config, head)
    else:
        model, params = replace_head(model, params, head, jax.random.key(rng_seed),
                                     task_heads=tuple(task_heads))
    if scan_layers:
        model = dataclasses.replace(model, config=config.with_policy(scan_layers=True))
        params = to_layout(params, scan_layers=True)

    logger.debug("loaded %s from %s in %.2f s", name_or_path, source, time.perf_counter() - start)
    return Pretrained(model=model, params=params, tokenizer=tokenizer, source=source,
                      name=str(name_or_path))


# (source, name) -> (Checkpoint, Tokenizer) while `reuse_checkpoints` is active, else None.
_read_cache: dict | None = None


@contextlib.contextmanager
def reuse_checkpoints():
    """Within this block `load_pretrained` reads and converts each checkpoint file once.

    For many runs in one process (a sweep): reading SmolLM2's GGUF (dequantizing every tensor)
    and its tokenizer costs ~10 s on a 2-core CPU each time. What is kept is the converted
    host (numpy) copy; every load still fills fresh device arrays from it, so a train step
    that donates its parameters cannot delete what the next run loads.
    """
    global _read_cache
    outer = _read_cache
    _read_cache = {} if outer is None else outer
    try:
        yield
    finally:
        _read_cache = outer


def _read(source: Path, *, name: str) -> tuple[Checkpoint, Tokenizer]:
    if _read_cache is not None:
        key = (str(source), name)
        if key not in _read_cache:
            _read_cache[key] = _read_files(source, name=name)
        return _read_cache[key]
    return _read_files(source, name=name)


def _read_files(source: Path, *, name: str) -> tuple[Checkpoint, Tokenizer]:
    tokenizer_name = name if name in assets.ASSETS else None
    if source.is_file() and source.suffix == ".gguf":
        reader = open_gguf(source)
        return (read_gguf_checkpoint(source, reader),
                Tokenizer.from_gguf(source, name=tokenizer_name, fields=reader.fields))
    if source.is_dir() and (source / CONFIG_FILE).is_file():
        return read_hf_checkpoint(source), Tokenizer.from_hf_dir(source, name=tokenizer_name)
    if source.is_file() and source.suffix == ".onnx":
        # An ONNX export ships no tokenizer: the asset names the one it was trained with, a
        # bare file looks for tokenizer.json beside it.
        asset = assets.ASSETS.get(name)
        vocab = assets.resolve(asset.tokenizer) if asset and asset.tokenizer else source.parent
        return read_onnx_bert(source), Tokenizer.from_hf_dir(vocab, name=tokenizer_name)
    found = ("a directory without config.json" if source.is_dir()
             else "a file that is neither .gguf nor .onnx")
    raise CheckpointError(f"{source}: expected a .gguf file, an .onnx BERT encoder or a Hugging "
                          f"Face checkpoint directory (config.json + model.safetensors), found "
                          f"{found}")
