"""Packing variable-length document pieces into fixed-length rows, as grain transformations.

Algorithm: grain's ``FirstFitPackIterDataset`` (greedy first-fit, deterministic). It opens
``num_bins`` empty rows, puts each incoming piece into the first row with room, and when a piece
fits nowhere emits all the rows (in row order, no bin shuffling: the upstream order is already
shuffled) and starts over with that piece. Pieces are never split here; the task makes every
piece at most ``length`` long. Its iterator state is the upstream state at the start of the
current round plus the row within it, so ``get_state``/``set_state`` resume exactly.

A packed row holds pieces of several documents, so it has no one record (example_id -1). Each
piece carries its document's record on the tokens of the document's FIRST piece (`PIECE_RECORD`,
-1 on later pieces and padding): a reader that must see each document once per pass (a replay
buffer) counts those.
"""

from __future__ import annotations

from collections.abc import Sequence

import grain
import numpy as np

from ftjax.data.features import Row

PIECE_FEATURES = ("input_ids", "labels", "loss_mask")
PIECE_RECORD = "first_piece_record"  # the row feature; packed as record + 1 (0 is padding)
_RECORD = "record"


def packed_shapes(length: int) -> dict:
    """The row shapes packing adds to a task's (first_piece_record)."""
    return {PIECE_RECORD: ((length,), np.dtype(np.int32))}


class PiecesWithRecord:
    """A document featurizer's pieces, the first one's tokens tagged with the document's
    record index (IndexedRecord.record_index)."""

    def __init__(self, featurize):
        self.featurize = featurize

    def __call__(self, item) -> list[dict[str, np.ndarray]]:
        pieces = self.featurize(item)
        for i, piece in enumerate(pieces):
            tag = item.record_index + 1 if i == 0 else 0
            piece[_RECORD] = np.full(len(piece["input_ids"]), tag, np.int32)
        return pieces


class _Unlist(grain.experimental.FlatMapTransform):
    """Each upstream element is a list of pieces (a document split by the task)."""

    # grain reads max_fan_out only in the MapDataset flavour; the IterDataset one used here
    # takes lists of any length.
    max_fan_out = 1 << 20

    def flat_map(self, pieces: Sequence[dict[str, np.ndarray]]) -> Sequence[dict[str, np.ndarray]]:
        return pieces


class _PackedToRow:
    """Grain's packed output (``<feature>_segment_ids`` / ``_positions``) -> the row layout."""

    def __call__(self, packed: dict[str, np.ndarray]) -> Row:
        segment_ids = packed["input_ids_segment_ids"].astype(np.int32)
        attention_mask = (segment_ids > 0).astype(np.int32)
        return {
            "input_ids": packed["input_ids"].astype(np.int32),
            "attention_mask": attention_mask,
            "positions": packed["input_ids_positions"].astype(np.int32),
            "segment_ids": segment_ids,
            "token_type_ids": np.zeros_like(segment_ids),
            "labels": packed["labels"].astype(np.int32),
            "loss_mask": packed["loss_mask"].astype(np.float32),
            PIECE_RECORD: packed[_RECORD].astype(np.int32) - 1,
        }


def pack_documents(
    documents: grain.IterDataset, *, length: int, num_bins: int, pad_id: int
) -> grain.IterDataset:
    """Rows of exactly ``length`` from an IterDataset whose elements are lists of pieces
    tagged by PiecesWithRecord."""
    pieces = grain.experimental.FlatMapIterDataset(documents, _Unlist())
    packed = grain.experimental.FirstFitPackIterDataset(
        pieces,
        length_struct={name: length for name in (*PIECE_FEATURES, _RECORD)},
        num_packing_bins=num_bins,
        shuffle_bins=False,
        padding_struct={"input_ids": pad_id, "labels": pad_id, "loss_mask": 0.0, _RECORD: 0},
    )
    return packed.map(_PackedToRow())
