"""Atomic writers: a temporary file in the same folder, then ``os.replace``.

A crash or a kill therefore leaves either the old file or the new one, never half of one. The file gets
the mode a plain ``open()`` would give it under the process's umask (``0o666 & ~umask``), not the 0600
of a temporary file, so a lab's group-readable results folder stays readable by the group.
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


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux ``/proc``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but only read here)
    os.umask(mask)
    return mask


@contextmanager
def atomic_output(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer; on success it replaces ``path`` atomically.

    ``suffix`` ends the temporary name, for writers that choose the format by it (``.nii.gz``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~current_umask())
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
    """The CSV at ``path``; an empty frame with ``columns`` when the file is absent, empty or has no header.

    The one CSV reader of the suite (run folder, merge, charts): callers test ``.empty``."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame(columns=list(columns or []))
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame(columns=list(columns or []))


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
