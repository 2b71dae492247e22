"""Packing variable-length document pieces into fixed-length rows, as grain transformations.

Algorithm: grain's ``FirstFitPackIterDataset`` (greedy first-fit, deterministic). It opens
``num_bins`` empty rows, puts each incoming piece into the first row with room, and when a piece
fits nowhere emits all the rows (in row order, no bin shuffling: the upstream order is already
shuffled) and starts over with that piece. Pieces are never split here; the task makes every
piece at most ``length`` long. Its iterator state is the upstream state at the start of the
current round plus the row within it, so ``get_state``/``set_state`` resume exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import grain
import numpy as np

from ftjax.data.features import Row

PIECE_FEATURES = ("input_ids", "labels", "loss_mask")


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
        }


def pack_documents(
    documents: grain.IterDataset, *, length: int, num_bins: int, pad_id: int
) -> grain.IterDataset:
    """Rows of exactly ``length`` from an IterDataset whose elements are lists of pieces."""
    pieces = grain.experimental.FlatMapIterDataset(documents, _Unlist())
    packed = grain.experimental.FirstFitPackIterDataset(
        pieces,
        length_struct={name: length for name in PIECE_FEATURES},
        num_packing_bins=num_bins,
        shuffle_bins=False,
        padding_struct={"input_ids": pad_id, "labels": pad_id, "loss_mask": 0.0},
    )
    return packed.map(_PackedToRow())
