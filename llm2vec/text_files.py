"""Reading the text files users hand in (training texts, STS pairs, JSON lines), with errors that
name the file and line.

- Files are UTF-8; a byte-order mark at the start is dropped. Bytes that are not UTF-8 are an error
  naming the file, line and byte, never silently replaced.
- Lines end at "\\n" (a "\\r" before it is dropped). Other control characters (form feed, NUL,
  U+2028, ...) stay inside their line: str.splitlines would cut a sentence in two at them.
- A TSV has a header row; a row with fewer fields than the header is an error naming its line.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Iterator


def read_text(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file {str(path)!r} does not exist")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte 0x{data[error.start]:02x} at offset {error.start}); "
                         "convert the file to UTF-8") from None


def numbered_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(line number, line without its line break) for every line of the file."""
    text = read_text(path)
    lines = text.split("\n")
    if lines and lines[-1] == "":  # the final line break ends the last line; it starts none
        lines.pop()
    for number, line in enumerate(lines, 1):
        yield number, line.removesuffix("\r")


def read_tsv(path: str | Path, columns: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) of a tab-separated file whose header holds at least `columns`; no quoting
    (a quote is an ordinary character, as in the STS files)."""
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    header = reader.fieldnames
    if not header:
        raise ValueError(f"{path} is empty: expected a TSV with columns {', '.join(columns)}")
    missing = [c for c in columns if c not in header]
    if missing:
        raise ValueError(f"{path}: expected a TSV with columns {', '.join(columns)}; the header lacks "
                         f"{', '.join(missing)} (it has: {', '.join(map(str, header))})")
    rows = []
    for row in reader:
        short = [c for c in columns if row.get(c) is None]
        if short:
            raise ValueError(f"{path}:{reader.line_num}: the row has no {', '.join(short)} field "
                             f"(expected {len(header)} tab-separated fields)")
        rows.append((reader.line_num, row))
    if not rows:
        raise ValueError(f"{path} has a header but no rows")
    return rows
