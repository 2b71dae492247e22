"""The two interfaces the data package is written against: record sources and tokenizers.

Both are structural (``typing.Protocol``): any object with these members works, e.g. a list of
dicts, a ``datasets.Dataset`` or a ``tfds`` data source for records, and ftjax's tokenizer or
a small test adapter for tokenizers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

Record = Mapping[str, Any]


@runtime_checkable
class RecordSource(Protocol):
    """Random access to records: what grain's ``MapDataset.source`` needs."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Record: ...


@runtime_checkable
class TokenizerLike(Protocol):
    """What the tasks need from a tokenizer.

    ``encode(text, add_special_tokens=True)`` must NOT pad or truncate: the tasks do both, so
    that they can keep the final special token when truncating.
    """

    pad_id: int
    bos_id: int | None
    eos_id: int | None
    vocab_size: int
    special_ids: frozenset[int]

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def encode_batch(
        self, texts: Sequence[str], add_special_tokens: bool = True
    ) -> list[list[int]]: ...

    def token_to_id(self, token: str) -> int | None: ...
