"""Preparing users' files before a federation: one file per client, and a shared vocabulary file.

`hasa split` turns one pooled file into the per-device files a deployment needs; `hasa vocab`
writes the vocabulary file that every party reads under `vocab-path` (no vocabulary round, so the
server learns no client's word counts).
"""

from __future__ import annotations

from pathlib import Path

from .atomic import atomic_path, write_text_atomic
from .clients import LOCAL, Source, federation_vocab, text_split
from .core import DataError
from .files import SUFFIXES, client_files, read_table, resolve_path
from .text import PAD, UNK, clean_title

ARGUMENT_FIX = "pass an existing one (a relative path is also looked up under $HASA_DATA_DIR)"


def split_by_column(path: str | Path, client_column: str, out: str | Path) -> list[Path]:
    """One CSV per distinct value of ``client_column`` (rows in file order, every column kept)."""
    src = resolve_path(str(path), "`hasa split` FILE", fix=ARGUMENT_FIX)
    table = read_table(src)
    if client_column not in table.column_names:
        raise DataError(f"{src} has no column {client_column!r} (columns: {', '.join(table.column_names)}): "
                        "pass --client-column")
    frame = table.to_pandas()
    values = [v for v in dict.fromkeys(frame[client_column]) if str(v or "").strip()]
    bad = [v for v in values if "/" in str(v) or str(v).startswith(".")]
    if bad:
        raise DataError(f"client name(s) {bad} cannot be file names: rename them in column {client_column!r}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out} is not empty: choose a new folder for the per-client files")
    with atomic_path(out, folder=True) as tmp:  # the whole folder appears at once, or nothing
        for value in values:
            frame[frame[client_column] == value].to_csv(tmp / f"{value}.csv", index=False)
    return [out / f"{value}.csv" for value in values]


def vocab_from_files(paths: list[str], *, text_column: str = "title", min_count: int = 2, seed: int = 0,
                     test_fraction: float = 0.2, max_title_words: int = 24) -> list[str]:
    """The vocabulary round's result, computed where the files are: pooled training-split counts.

    Each file (or each file of a folder) is one client, split by ``seed`` exactly as in a run, so
    the file equals the vocabulary a run with that seed would agree on."""
    files: list[Path] = []
    for p in paths:
        path = resolve_path(p, "`hasa vocab` FILE|FOLDER", fix=ARGUMENT_FIX)
        files += client_files(path) if path.is_dir() else [path]
    for f in files:
        if f.suffix.lower() not in SUFFIXES:
            raise DataError(f"{f}: unknown file type {f.suffix or '(none)'}; use {', '.join(SUFFIXES)}")
    src = Source("text", text_column=text_column, seed=seed, test_fraction=test_fraction,
                 max_title_words=max_title_words, min_count=min_count)
    splits = [text_split(src, LOCAL, str(f), f.stem) for f in files]
    vocab = federation_vocab(src, splits)
    if len(vocab) <= 2:
        raise DataError(f"no word reaches min-count {min_count} in {len(files)} file(s): lower --min-count")
    return vocab


def candidate_words(source: str, top: int) -> list[str]:
    """Public candidate words for secure-stats, cleaned as titles are: the ``top`` most frequent
    English words of the `wordfreq` package, or the synthetic language's words."""
    if source == "synthetic":
        from .synthetic import synthetic_words
        raw = synthetic_words()
    elif source == "wordfreq":
        try:
            from wordfreq import top_n_list
        except ImportError:
            raise DataError("--from wordfreq needs the wordfreq package: pip install wordfreq") from None
        raw = top_n_list("en", int(top * 1.3) + 100)  # some merge or vanish when cleaned
    else:
        raise DataError(f"unknown candidate source '{source}': choose wordfreq or synthetic")
    words: list[str] = []
    seen: set[str] = set()
    for w in raw:
        for clean in clean_title(w):
            if clean not in seen:
                seen.add(clean)
                words.append(clean)
    return words[:top]


def write_vocab(vocab: list[str], out: str | Path) -> Path:
    words = [w for w in vocab if w not in (PAD, UNK)]
    write_text_atomic(Path(out), "\n".join(words) + "\n")
    return Path(out)
