"""Tiny real tokenizers for tests: ``tokenizers`` objects behind the ``TokenizerLike`` protocol.

Word-level vocabularies make token counts obvious (one word, one token), which is what
invariant tests want. Not imported by ``ftjax.data``; tests import it explicitly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import tokenizers
from tokenizers import models, pre_tokenizers, processors


class TokenizersAdapter:
    """A ``tokenizers.Tokenizer`` as a ``TokenizerLike``; never pads or truncates.

    The wrapped tokenizer is copied, then padding and truncation are switched off: a
    ``tokenizer.json`` may carry both (all-MiniLM-L6-v2 pads and truncates at 128), and the
    tasks need the raw ids.
    """

    def __init__(self, tokenizer: tokenizers.Tokenizer, *, pad_token: str,
                 bos_token: str | None = None, eos_token: str | None = None):
        self._tokenizer = tokenizers.Tokenizer.from_str(tokenizer.to_str())
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self.pad_id = self._require_id(pad_token)
        self.bos_id = None if bos_token is None else self._require_id(bos_token)
        self.eos_id = None if eos_token is None else self._require_id(eos_token)
        self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)
        self.special_ids = frozenset(
            token_id
            for token_id, added in self._tokenizer.get_added_tokens_decoder().items()
            if added.special
        )

    def _require_id(self, token: str) -> int:
        token_id = self._tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"token {token!r} is not in the vocabulary")
        return token_id

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str],
                     add_special_tokens: bool = True) -> list[list[int]]:
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        return [e.ids for e in encodings]

    def token_to_id(self, token: str) -> int | None:
        return self._tokenizer.token_to_id(token)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=False)


ENCODER_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
DECODER_SPECIALS = ("<pad>", "<unk>", "<s>", "</s>")


def _word_level(specials: Sequence[str], words: Iterable[str], unk: str) -> tokenizers.Tokenizer:
    vocab = {token: i for i, token in enumerate(specials)}
    for word in words:
        vocab.setdefault(word, len(vocab))
    tokenizer = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens(list(specials))
    return tokenizer


def tiny_encoder_tokenizer(words: Iterable[str]) -> TokenizersAdapter:
    """BERT-like: ``[CLS] a [SEP] (b [SEP])``, pad id 0, a [MASK] token, no EOS."""
    tokenizer = _word_level(ENCODER_SPECIALS, words, "[UNK]")
    ids = {t: tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]")}
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=list(ids.items()),
    )
    return TokenizersAdapter(tokenizer, pad_token="[PAD]")


def tiny_decoder_tokenizer(words: Iterable[str]) -> TokenizersAdapter:
    """Llama-like: prepends BOS ``<s>``, EOS ``</s>``, pad ``<pad>``."""
    tokenizer = _word_level(DECODER_SPECIALS, words, "<unk>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))]
    )
    return TokenizersAdapter(tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
