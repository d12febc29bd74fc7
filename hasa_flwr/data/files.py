"""Users' own files: CSV, JSON Lines, Parquet (through HF `datasets`) or plain text.

Everything here runs on the device that holds the file; errors name the file and the fix.
"""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path

from .core import DataError

TABLE_SUFFIXES = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
TEXT_SUFFIXES = (".txt",)
SUFFIXES = (*TABLE_SUFFIXES, *TEXT_SUFFIXES)


def resolve_path(text: str, what: str = "data-path", fix: str = "") -> Path:
    """An absolute path; a relative one that is not here is looked up under $HASA_DATA_DIR.

    ``fix`` replaces the default advice (set ``what`` or HASA_DATA_DIR) where ``what`` is not a
    run-config key, e.g. a command's argument."""
    if not str(text).strip():
        raise DataError(f"{what} is empty: set it to your data file or folder (relative paths are also looked up "
                        "under $HASA_DATA_DIR)")
    given = Path(text).expanduser()
    path = given
    if not path.is_absolute() and not path.exists() and os.environ.get("HASA_DATA_DIR"):
        path = Path(os.environ["HASA_DATA_DIR"]).expanduser() / path
    if not path.exists():
        fix = fix or f"set {what} to an existing file or folder, or HASA_DATA_DIR to the folder that holds it"
        raise DataError(f"{what} {given} not found{tried(given, path)}: {fix}")
    return path.absolute()


def tried(given: Path, path: Path) -> str:
    """Where a missing path was looked for, so that a relative one shows both places."""
    unset = "" if os.environ.get("HASA_DATA_DIR") else "HASA_DATA_DIR is unset"
    if given.is_absolute():
        return f" ({unset})" if unset else ""
    places = f"{given.absolute()}" + (f" and {path}" if path != given else "")
    return f" (tried {places}{'; ' + unset if unset else ''})"


def client_files(folder: Path) -> list[Path]:
    """One file per client, in name order; hidden files are ignored."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in SUFFIXES)
    if not files:
        raise DataError(f"folder {folder} holds no client files ({', '.join(SUFFIXES)}): put one file per client "
                        "there, or point data-path at one file with a client-column")
    return files


def read_table(path: Path):
    """A file as an in-memory HF ``datasets.Dataset`` of strings (no cache left in $HOME)."""
    import datasets

    datasets.disable_progress_bars()
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        raise AssertionError("plain text has no table")  # read_column handles it
    if suffix not in TABLE_SUFFIXES:
        raise DataError(f"{path}: unknown file type {suffix or '(none)'}; use .csv, .jsonl, .parquet or .txt "
                        "(one title per line)")
    if not path.is_file():
        raise DataError(f"data file {path} not found: check this device's data-path")
    with path.open("rb") as f:
        if not f.read(4096).strip():
            raise DataError(f"{path} is empty: give this client a file with titles")
    kwargs = {}
    try:
        if suffix == ".csv":  # every column as text, empty cells as '' (no type guessing per chunk)
            # utf-8-sig: a spreadsheet's byte-order mark is not part of the first column's name
            with path.open(newline="", encoding="utf-8-sig") as f:
                header = next(csv.reader(f), [])
            kwargs = {"keep_default_na": False, "encoding": "utf-8-sig",
                      "features": datasets.Features({c: datasets.Value("string") for c in header})}
        with tempfile.TemporaryDirectory(prefix="hasa-hf-") as cache:
            table = datasets.load_dataset(TABLE_SUFFIXES[suffix], data_files=str(path), split="train",
                                          cache_dir=cache, keep_in_memory=True, **kwargs)
    except Exception as err:  # datasets raises many types for a bad file; all mean the same to a user
        reason = str(err).strip().splitlines()[-1][:200] if str(err).strip() else type(err).__name__
        raise DataError(f"cannot read {path} as {suffix[1:]} ({reason}): check the file's format") from err
    if table.num_rows == 0:
        raise DataError(f"{path} is empty: give this client a file with titles")
    return table


def read_column(path: Path, column: str) -> list[str]:
    """One text column (or every line of a .txt file) as strings; missing values become ''."""
    if not path.is_file():
        raise DataError(f"data file {path} not found: check this device's data-path")
    if path.suffix.lower() in TEXT_SUFFIXES:
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"cannot read {path} ({type(err).__name__}): it must be UTF-8 text, one title per "
                            "line") from err
        if not any(line.strip() for line in lines):
            raise DataError(f"{path} is empty: give this client a file with titles, one per line")
        return lines
    table = read_table(path)
    if column not in table.column_names:
        raise DataError(f"{path} has no column {column!r} (columns: {', '.join(table.column_names)}): set "
                        "text-column to the column that holds the titles")
    return ["" if v is None else str(v) for v in table[column]]
