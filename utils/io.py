"""Atomic writers: a temporary file in the same folder, then ``os.replace``.

A crash or a kill therefore leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer; on success it replaces ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_csv(path: str | Path, df: pd.DataFrame) -> None:
    atomic_write_text(path, df.to_csv(index=False))


def read_csv(path: str | Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The CSV at ``path``; an empty frame with ``columns`` when the file does not exist."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame(columns=list(columns or []))
    return pd.read_csv(path)


def append_rows(path: str | Path, rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    """Append ``rows`` to the CSV at ``path`` atomically; ``columns`` come first, extra keys after."""
    new = pd.DataFrame(list(rows))
    old = read_csv(path, columns)
    frames = [f for f in (old, new) if not f.empty]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(columns))
    ordered = list(columns) + [c for c in df.columns if c not in columns]
    df = df.reindex(columns=ordered)
    write_csv(path, df)
    return df


def replace_rows(
    path: str | Path, match: Mapping[str, Any], rows: Iterable[Mapping[str, Any]], columns: Sequence[str]
) -> pd.DataFrame:
    """Drop the rows whose columns equal ``match``, then append ``rows``: re-running a unit never duplicates rows."""
    df = read_csv(path, columns)
    if not df.empty and all(k in df.columns for k in match):
        keep = ~pd.concat([df[k] == v for k, v in match.items()], axis=1).all(axis=1)
        if not keep.all():
            write_csv(path, df[keep])
    return append_rows(path, rows, columns)
