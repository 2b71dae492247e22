"""A SentencePiece BPE vocabulary (GGUF `tokenizer.ggml.model == "llama"`: Llama 2, Gemma) as a
`tokenizers` BPE model.

GGUF keeps such a vocabulary as its pieces, their scores and their types, not as merges. In
SentencePiece's BPE the pair merged first is the one whose merged piece scores highest, so the
merges are every split (left, right) of a normal piece into two pieces of the vocabulary,
ranked by the merged piece's score (ties: by the pieces' ids). Spaces are "▁" (U+2581), with
one prepended to the text when the model says so (`add_space_prefix`); characters outside the
vocabulary fall back to their UTF-8 bytes (the <0xNN> pieces).
"""

from __future__ import annotations

from collections.abc import Sequence

import tokenizers
from tokenizers import decoders, models, normalizers

SPACE = "\u2581"
# GGUF token types (llama.cpp's llama_token_type).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def spm_merges(pieces: Sequence[str], scores: Sequence[float],
               types: Sequence[int]) -> list[tuple[str, str]]:
    """The BPE merges that reproduce SentencePiece's, best first (see the module docstring)."""
    ids = {piece: i for i, piece in enumerate(pieces)}
    ranked = []
    for merged, (score, kind) in zip(pieces, zip(scores, types)):
        if kind != NORMAL or len(merged) < 2:
            continue
        for cut in range(1, len(merged)):
            left, right = merged[:cut], merged[cut:]
            if left in ids and right in ids:
                ranked.append((-score, ids[merged], ids[left], ids[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def spm_bpe_backend(pieces: Sequence[str], scores: Sequence[float], types: Sequence[int], *,
                    unk: str | None, add_space_prefix: bool) -> tokenizers.Tokenizer:
    """A `tokenizers.Tokenizer` encoding and decoding as the SentencePiece model does."""
    vocab = {piece: i for i, piece in enumerate(pieces)}
    backend = tokenizers.Tokenizer(models.BPE(
        vocab=vocab, merges=spm_merges(pieces, scores, types), unk_token=unk,
        byte_fallback=True, fuse_unk=True))
    replace = normalizers.Replace(" ", SPACE)
    backend.normalizer = (normalizers.Sequence([normalizers.Prepend(SPACE), replace])
                          if add_space_prefix else replace)
    steps = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_space_prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    backend.decoder = decoders.Sequence(steps)
    return backend
