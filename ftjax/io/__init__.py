"""Checkpoint and tokenizer input/output: GGUF and Hugging Face formats in, HF format out,
adapter-only checkpoints in and out."""

from ftjax.io.adapter import load_adapter, save_adapter
from ftjax.io.hf import save_hf
from ftjax.io.loading import CheckpointError
from ftjax.io.pretrained import Pretrained, load_pretrained, reuse_checkpoints

__all__ = ["CheckpointError", "Pretrained", "load_adapter", "load_pretrained",
           "reuse_checkpoints", "save_adapter", "save_hf"]
