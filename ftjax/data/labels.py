"""Class labels as files hold them (names such as "pos", or integer ids such as 0 or "1") and the
ids the model sees.

``LabelSet.of(...)`` decides once per source how labels read, by these rules:

- names given (configured, or read back from a saved run): a label that is one of the names
  gets that name's position; any other label must be an integer id in ``[0, len(names))``. A
  label is compared as text, so ``5`` in a jsonl file and ``"5"`` in a csv file both match the
  name "5".
- no names, and every train label an integer id: ids are kept as they are; no names exist.
- no names, and names in the train labels: the names are the sorted distinct train labels;
  any other label (in validation or test) is an error naming where it is and the known names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from ftjax.data.errors import DataError, LabelOutOfRangeError
from ftjax.data.records import as_int


def label_text(raw: Any) -> str:
    """A label as a name is compared: text as it is, an integral number as its digits."""
    if isinstance(raw, str):
        return raw
    value = as_int(raw)
    return str(value) if value is not None else str(raw)


def is_missing(raw: Any) -> bool:
    return raw is None or (isinstance(raw, str) and not raw.strip())


@dataclasses.dataclass(frozen=True)
class LabelSet:
    """How one source's labels become ids.

    names: the label names in id order; None when the files hold integer ids without names.
    num_labels: ids lie in ``[0, num_labels)``; None (no names, no task size given): any id
      >= 0.
    origin: where the names come from, for error messages ("inferred from the train split").
    """

    names: tuple[str, ...] | None
    num_labels: int | None
    origin: str = ""
    _ids: dict[str, int] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        names = self.names or ()
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise DataError(f"label names {list(names)} repeat {duplicates}")
        object.__setattr__(self, "_ids", {name: i for i, name in enumerate(names)})

    @classmethod
    def of(
        cls,
        train_labels: Iterable[Any] | None,
        *,
        names: Sequence[str] | None = None,
        num_labels: int | None = None,
        where: str = "",
    ) -> "LabelSet":
        """The label set from given ``names``, else from ``train_labels`` (raw values; None
        when the train split is not at hand). ``num_labels`` (the task's) must agree with the
        names; ``where`` names the train split in errors."""
        if names:
            found = cls(tuple(names), len(names), "as given")
        elif train_labels is None:
            found = cls(None, num_labels, "the train split is not loaded")
        else:
            raw = [label for label in train_labels if not is_missing(label)]
            if all(as_int(label) is not None for label in raw):
                found = cls(None, num_labels, "the train labels are integer ids")
            else:
                inferred = tuple(sorted({label_text(label) for label in raw}))
                found = cls(inferred, len(inferred), f"inferred from the train split {where}")
        if num_labels is not None and found.names is not None and len(found.names) != num_labels:
            raise LabelOutOfRangeError(
                f"{len(found.names)} label names {list(found.names)} ({found.origin}) for a "
                f"task of {num_labels} labels")
        return found

    def id_of(self, raw: Any, where: str) -> int:
        """The id of label ``raw``; ``where`` ("column 'label' of row 3 (line 5) of a.csv")
        locates it in errors."""
        if is_missing(raw):
            raise LabelOutOfRangeError(f"no label in {where} (got {raw!r})")
        name_id = self._ids.get(label_text(raw))
        if name_id is not None:
            return name_id
        label = as_int(raw)
        if label is None:
            if self.names is not None:
                raise LabelOutOfRangeError(
                    f"label {raw!r} in {where} is not one of the labels {list(self.names)} "
                    f"({self.origin})")
            raise LabelOutOfRangeError(f"label {raw!r} in {where} is not an integer id, and "
                                       f"the source has no label names ({self.origin}): set "
                                       f"labels, or pass the run's label names")
        if self.num_labels is None:
            if label < 0:
                raise LabelOutOfRangeError(f"label {label} in {where} is negative")
        elif not 0 <= label < self.num_labels:
            known = "" if self.names is None else f" of the labels {list(self.names)}"
            raise LabelOutOfRangeError(
                f"label {label} in {where} is out of range [0, {self.num_labels}){known}")
        return label
