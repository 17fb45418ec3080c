"""Streaming readers for unlabeled input: ``.txt`` (one text a line), ``.csv``, ``.jsonl`` and ``.parquet``.

Rows are read in chunks (pandas ``chunksize``, pyarrow ``iter_batches``), so memory does not grow with the file.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SUFFIXES = (".txt", ".csv", ".jsonl", ".parquet")


class InputError(ValueError):
    """The input file cannot be used: missing, unknown format, unknown column, no rows."""


@dataclass(frozen=True)
class InputRow:
    """One input row: its text and, when an id column was named, that column's value as a string."""

    text: str
    source_id: str | None = None


def _check_path(path: Path) -> str:
    if not path.is_file():
        raise InputError(f"input file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise InputError(f"unsupported input format {suffix or '(none)'!r} of {path}: use one of {', '.join(SUFFIXES)}")
    return suffix


def _missing(columns, wanted: list[str], path: Path) -> None:
    columns = [str(c) for c in columns]
    for name in wanted:
        if name not in columns:
            raise InputError(f"column {name!r} not found in {path}; columns: {', '.join(columns) or '(none)'}")


def _cell(value) -> str | None:
    if value is None:
        return None
    try:
        if value != value:  # NaN
            return None
    except (TypeError, ValueError):
        pass
    return str(value)


def iter_rows(path: str | Path, text_column: str = "text", id_column: str | None = None,
              chunk_size: int = 1000, strip: bool = False) -> Iterator[InputRow]:
    """Yield the rows of ``path`` in file order, each text exactly as the file holds it.

    ``.txt`` files have one text a line (the line without its line break; ``text_column``/``id_column`` are
    ignored, blank lines skipped); other formats need ``text_column`` (and ``id_column`` when given). Missing or
    blank (whitespace-only) texts come out as ``""``. ``strip=True`` removes surrounding whitespace from every
    text (``push --strip-whitespace``; the record id is derived from the stored text, so the choice must stay the
    same for one dataset).

    Raises:
        InputError: the file is missing, of an unknown format, or lacks a named column (raised before the
            first row is yielded).
    """
    path = Path(path)
    suffix = _check_path(path)
    if suffix == ".txt":
        with path.open(encoding="utf-8", newline="") as handle:
            for line in handle:
                if line.strip():
                    yield InputRow(_as_stored(line.rstrip("\r\n"), strip))
        return
    wanted = [text_column] + ([id_column] if id_column else [])
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        _missing(parquet.schema_arrow.names, wanted, path)
        for batch in parquet.iter_batches(batch_size=chunk_size, columns=wanted):
            yield from _chunk_rows(batch.to_pydict(), text_column, id_column, strip)
        return
    import pandas as pd

    try:
        if suffix == ".csv":
            reader = pd.read_csv(path, chunksize=chunk_size, dtype=str, keep_default_na=False)
        else:
            reader = pd.read_json(path, lines=True, chunksize=chunk_size, dtype=False)
        with reader:
            for chunk in reader:
                _missing(chunk.columns, wanted, path)
                yield from _chunk_rows({c: chunk[c].tolist() for c in wanted}, text_column, id_column, strip)
    except pd.errors.EmptyDataError:
        return
    except ValueError as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"cannot parse {path}: {exc}") from None


def _as_stored(text: str, strip: bool) -> str:
    """The text to store: as given (``""`` when blank), or stripped of surrounding whitespace."""
    if not text.strip():
        return ""
    return text.strip() if strip else text


def _chunk_rows(columns: dict, text_column: str, id_column: str | None, strip: bool = False) -> Iterator[InputRow]:
    ids = columns[id_column] if id_column else [None] * len(columns[text_column])
    for text, source_id in zip(columns[text_column], ids):
        yield InputRow(_as_stored(_cell(text) or "", strip), _cell(source_id))


def count_rows(path: str | Path) -> int | None:
    """Number of rows when it is cheap to know (parquet metadata, lines of .txt/.jsonl), else ``None``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    if suffix in (".txt", ".jsonl"):
        with path.open("rb") as handle:
            return sum(1 for line in handle if line.strip())
    return None
