"""Reading local data files into rows: bytes, decoded with the configured encoding, parsed by
format into dicts of column -> value.

Formats (``format="auto"`` picks one by the file's extension):

- csv: RFC 4180 (quoted fields may hold commas and newlines), a header row.
- tsv: a header row, no quoting: every line splits on tabs.
- jsonl: one JSON object per line (blank lines skipped).
- json: one JSON list of objects.
- conll: one ``token<TAB or space>tag`` per line (the tag is the last field), a sentence
  ends at a blank line (a line of only whitespace, e.g. one TAB, is blank); "-DOCSTART-"
  lines are skipped. Each record ``{"tokens": [...], "tags": [...], "lines": [...]}``
  (``lines``: each token's line number, for errors about its tag).
- txt: text only, each record ``{"text": ...}``; ``txt_unit`` says what a record is: "line"
  (each non-blank line), "paragraph" (runs of non-blank lines, separated by blank lines,
  joined with "\\n") or "document" (the whole file).

Everything is read and checked at once, so a bad file fails before training starts. Errors
(``ftjax.data.errors``) say in one line which file and line, and what is wrong: bytes the
encoding cannot decode (with an encoding that would), a row with more or fewer fields than the
header, invalid JSON. UTF-8 files may start with a byte order mark.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import charset_normalizer

from ftjax.assets import ASSETS, resolve

from ftjax.data.errors import (
    DataError,
    EmptySplitError,
    MalformedRowError,
    MissingFileError,
    UndecodableFileError,
)

FORMATS = ("auto", "csv", "tsv", "jsonl", "json", "txt", "squad", "conll")
TXT_UNITS = ("line", "paragraph", "document")
SUFFIX_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "json", ".txt": "txt",
                   ".conll": "conll"}

# Where charset-normalizer ranks several encodings (nearly) alike, as it does for short Western
# text (cp1250 and cp1252 decode most such bytes to plausible text), the suggestion takes the
# first of these that is among them: the encodings non-UTF-8 text files are most often in.
_COMMON_ENCODINGS = ("utf_8", "cp1252", "latin_1", "iso8859_15", "utf_16", "cp1251",
                     "shift_jis", "gb18030", "euc_kr", "big5")
# charset-normalizer's mess ratios within this of the lowest count as alike: about one
# misread character in a short text.
_CHAOS_TOLERANCE = 0.02


class ParsedRow(NamedTuple):
    """One parsed row; ``where`` ("row 3 (line 5) of data/train.csv") locates it in errors."""

    where: str
    fields: dict[str, Any]


def file_format(path: Path, format: str = "auto") -> str:
    """``format``, or with "auto" the format ``path``'s extension names."""
    if format != "auto":
        if format not in FORMATS:
            raise DataError(f"unknown format {format!r} for {path}; use one of {FORMATS}")
        return format
    suffix = path.suffix.lower()
    if suffix not in SUFFIX_FORMATS:
        raise DataError(f"unsupported file type {suffix!r} for {path}; use .csv, .tsv, .jsonl, "
                        f".json or .txt, or set the format")
    return SUFFIX_FORMATS[suffix]


GLOB_CHARACTERS = frozenset("*?[")


def is_pattern(path: str | Path) -> bool:
    """Whether a data path is a glob pattern over several files."""
    return bool(GLOB_CHARACTERS & set(str(path)))


def _read_matching(pattern: Path, **options) -> list[ParsedRow]:
    if is_pattern(pattern.parent):
        raise DataError(f"data path {pattern}: only the file name may be a pattern")
    files = sorted(p for p in pattern.parent.glob(pattern.name) if p.is_file())
    if not files:
        raise MissingFileError(f"data files not found: {pattern} matches no file")
    rows = []
    for path in files:
        for row in read_rows(path, **options):
            fields = row.fields if "file" in row.fields else {**row.fields, "file": path.name}
            rows.append(row._replace(fields=fields))
    return rows


def read_rows(
    path: str | Path,
    *,
    format: str = "auto",
    encoding: str = "utf-8",
    txt_unit: str = "line",
) -> list[ParsedRow]:
    """Every row of ``path``; a missing file, undecodable bytes, a malformed row or no rows at
    all raise a ``DataError``.

    A path with glob characters (``speeches/*.txt``) reads every matching file, in sorted
    order, each row with a ``file`` field (the file's name) unless it has one: one document
    per file with ``txt_unit="document"``, groups for ``split_group_column="file"``.
    """
    if is_pattern(path):
        return _read_matching(Path(path), format=format, encoding=encoding, txt_unit=txt_unit)
    path = Path(path)
    kind = file_format(path, format)
    if kind == "txt" and txt_unit not in TXT_UNITS:
        raise DataError(f"unknown txt_unit {txt_unit!r}; use one of {TXT_UNITS}")
    if not path.is_file():
        raise MissingFileError(f"data file not found: {path}")
    text = decode_file(path, encoding)
    if kind == "csv":
        rows = list(_delimited_rows(text, path))
    elif kind == "tsv":
        rows = list(_tsv_rows(text, path))
    elif kind == "jsonl":
        rows = list(_jsonl_rows(text, path))
    elif kind == "json":
        rows = list(_json_rows(text, path))
    elif kind == "conll":
        rows = list(_conll_rows(text, path))
    else:
        rows = list(_txt_rows(text, path, txt_unit))
    if not rows:
        raise EmptySplitError(f"data file {path} holds no records")
    return rows


# --------------------------------------------------------------------------------------------
# Bytes -> text


def decode_file(path: Path, encoding: str) -> str:
    """The file's text; a UTF-8 byte order mark is dropped. Undecodable bytes raise an
    ``UndecodableFileError`` naming the line, column and byte, and suggesting an encoding."""
    data = path.read_bytes()
    codec = _codec_name(encoding)
    used = "utf-8-sig" if codec == "utf-8" else encoding
    try:
        return data.decode(used)
    except UnicodeDecodeError as err:
        line, column = _position(data, err.start, used)
        suggested = suggest_encoding(data, failed=encoding)
        if suggested == "latin-1":
            hint = "no likely encoding found; latin-1 reads any bytes"
        else:
            hint = f"the file looks like {suggested}"
        raise UndecodableFileError(
            f"{path} line {line}, column {column}: byte 0x{data[err.start]:02x} is not valid "
            f"{encoding}; {hint}: set encoding=\"{suggested}\"",
            suggested_encoding=suggested,
        ) from None


def _codec_name(encoding: str) -> str:
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise DataError(f"unknown encoding {encoding!r}") from None


def _position(data: bytes, offset: int, encoding: str) -> tuple[int, int]:
    """1-based (line, column) of byte ``offset``: the column counts characters."""
    # Decoding stopped at `offset`, so everything before it decodes.
    before = data[:offset].decode(encoding, errors="replace")
    line_start = before.rfind("\n") + 1
    return before.count("\n") + 1, len(before) - line_start + 1


def suggest_encoding(data: bytes, *, failed: str) -> str:
    """An encoding that ``data`` most likely is in (not ``failed``): charset-normalizer's
    guess, the commonest of those it ranks alike; "latin-1" (which decodes any bytes) when it
    finds none."""
    failed = _codec_name(failed)
    matches = [m for m in charset_normalizer.from_bytes(data)
               if _codec_name(m.encoding) != failed]
    if not matches:
        return "latin-1"
    lowest = min(m.chaos for m in matches)
    alike = [m for m in matches if m.chaos <= lowest + _CHAOS_TOLERANCE]
    for name in _COMMON_ENCODINGS:
        if any(name in m.could_be_from_charset for m in alike):
            return name.replace("_", "-")
    return matches[0].encoding.replace("_", "-")


# --------------------------------------------------------------------------------------------
# Text -> rows


def _where(index: int, line: int, path: Path) -> str:
    return f"row {index} (line {line}) of {path}"


def _header_row(fields: list[str], line: int, path: Path) -> list[str]:
    duplicates = sorted({name for name in fields if fields.count(name) > 1})
    if duplicates:
        raise MalformedRowError(f"{path} line {line}: the header names column(s) {duplicates} "
                                f"more than once")
    return fields


def _record(fields: list[str], header: list[str], index: int, line: int,
            path: Path) -> ParsedRow:
    where = _where(index, line, path)
    if len(fields) != len(header):
        raise MalformedRowError(f"{where} has {len(fields)} fields, the header has "
                                f"{len(header)} ({header})")
    return ParsedRow(where, dict(zip(header, fields)))


def _delimited_rows(text: str, path: Path) -> Iterator[ParsedRow]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    index, line = 0, 1
    try:
        for fields in reader:
            start, line = line, reader.line_num + 1  # a quoted field may span lines
            if not fields:
                continue  # a blank line
            if header is None:
                header = _header_row(fields, start, path)
                continue
            yield _record(fields, header, index, start, path)
            index += 1
    except csv.Error as err:
        raise MalformedRowError(f"{path} line {reader.line_num}: {err}") from None


def _lines(text: str) -> Iterator[tuple[int, str]]:
    # split("\n") rather than splitlines(): the latter also breaks on unicode separators that
    # may sit inside a field.
    for number, line in enumerate(text.split("\n"), start=1):
        yield number, line.removesuffix("\r")


def _tsv_rows(text: str, path: Path) -> Iterator[ParsedRow]:
    header: list[str] | None = None
    index = 0
    for number, line in _lines(text):
        if not line:
            continue
        fields = line.split("\t")
        if header is None:
            header = _header_row(fields, number, path)
            continue
        yield _record(fields, header, index, number, path)
        index += 1


def _object_row(value: Any, where: str) -> ParsedRow:
    if not isinstance(value, dict):
        raise MalformedRowError(f"{where} is a {type(value).__name__}, not an object")
    return ParsedRow(where, value)


def _jsonl_rows(text: str, path: Path) -> Iterator[ParsedRow]:
    index = 0
    for number, line in _lines(text):
        if not line.strip():
            continue
        where = _where(index, number, path)
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise MalformedRowError(f"{where} is not valid JSON: {err.msg} at column "
                                    f"{err.colno}") from None
        yield _object_row(value, where)
        index += 1


_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def _json_rows(text: str, path: Path) -> Iterator[ParsedRow]:
    """The objects of one JSON list, each with the line it starts on."""
    decoder = json.JSONDecoder()

    def skip(pos: int) -> int:
        return _JSON_SPACE.match(text, pos).end()

    def invalid(err: json.JSONDecodeError) -> MalformedRowError:
        return MalformedRowError(f"{path} line {err.lineno}, column {err.colno}: not valid "
                                 f"JSON: {err.msg}")

    pos = skip(0)
    if not text.startswith("[", pos):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise invalid(err) from None
        raise MalformedRowError(f"{path} must hold a JSON list of objects, got "
                                f"{type(value).__name__}")
    pos, line, counted = skip(pos + 1), 1, 0
    index = 0
    while not (index == 0 and text.startswith("]", pos)):  # [] is an empty list
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise invalid(err) from None
        yield _object_row(value, _where(index, line, path))
        index += 1
        pos = skip(pos)
        if text.startswith("]", pos):
            break
        if not text.startswith(",", pos):
            line += text.count("\n", counted, pos)
            raise MalformedRowError(f"{path} line {line}: expected ',' or ']' after row "
                                    f"{index - 1}, got {text[pos:pos + 20]!r}")
        pos = skip(pos + 1)
    if skip(pos + 1) != len(text):
        raise MalformedRowError(f"{path}: text after the closing ']' of the list")


def _txt_rows(text: str, path: Path, unit: str) -> Iterator[ParsedRow]:
    if unit == "document":
        if text.strip():
            yield ParsedRow(_where(0, 1, path), {"text": text})
        return
    index = 0
    paragraph: list[str] = []
    first_line = 0
    for number, line in _lines(text):
        if unit == "line":
            if line.strip():
                yield ParsedRow(_where(index, number, path), {"text": line})
                index += 1
            continue
        if line.strip():
            if not paragraph:
                first_line = number
            paragraph.append(line)
        elif paragraph:
            yield ParsedRow(_where(index, first_line, path), {"text": "\n".join(paragraph)})
            index, paragraph = index + 1, []
    if paragraph:
        yield ParsedRow(_where(index, first_line, path), {"text": "\n".join(paragraph)})


def _conll_rows(text: str, path: Path) -> Iterator[ParsedRow]:
    tokens: list[str] = []
    tags: list[str] = []
    lines: list[int] = []
    index = 0
    for number, line in list(_lines(text)) + [(-1, "")]:
        if line.strip() == "":  # the end of a sentence; a lone TAB counts as blank
            if tokens:
                yield ParsedRow(f"sentence {index} (line {lines[0]}) of {path}",
                                {"tokens": tokens, "tags": tags, "lines": lines})
                index += 1
            tokens, tags, lines = [], [], []
            continue
        fields = line.split("\t") if "\t" in line.strip() else line.split()
        fields = [f.strip() for f in fields]
        if fields[0] == "-DOCSTART-":
            continue
        if len(fields) < 2 or not fields[0] or not fields[-1]:
            raise MalformedRowError(f"{path} line {number}: expected 'token<TAB>tag', got "
                                    f"{line!r} (no tag)")
        tokens.append(fields[0])
        tags.append(fields[-1])
        lines.append(number)


def one_file(path: str) -> Path:
    """The file (or pattern) a source's `path` names: a path, the name of an asset
    (ftjax.assets: "wnut16", "bbc-news"), or a path inside a directory asset
    ("spdx-licenses/*.txt"); an asset is fetched on first use, and an existing path wins."""
    if Path(path).exists():
        return Path(path)
    asset, _, inside = str(path).partition("/")
    if asset in ASSETS:
        return resolve(asset) / inside if inside else resolve(asset)
    return Path(path)
