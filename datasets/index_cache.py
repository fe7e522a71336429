"""A cache of the records read from an annotation file, so a later start skips parsing it.

Parsing COCO's train2017 keypoints (JSON) takes seconds and a gigabyte; its records, as a
:class:`~datasets.records.RecordTable`, take tens of MB and load in a fraction of a second. The
cache entry of a reading is keyed by

- the source files' resolved paths, sizes and modification times (ns),
- the reading options that change the records (image folder, crop aspect ratio, ...),
- the source of the reader's modules (this file, datasets/records.py and the reader's own), so
  a change to the reading code never meets records an older version wrote.

It lives in ``$POSE_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/pose-estimation`` or
``~/.cache/pose-estimation``: never in the data folder (which may be read-only or shared) nor a
run's folder. ``POSE_INDEX_CACHE=0`` turns it off. Entries are written atomically (a temporary
file renamed into place, so concurrent ranks or runs never see half a file) and read without
pickle; an entry that is unreadable or stale is ignored and rewritten, never an error. A source
modified in the last :data:`RACY_SECONDS` is not cached: a second edit within the file
system's timestamp resolution could keep its size and modification time.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from datasets.records import RecordTable

CACHE_ENV = "POSE_CACHE_DIR"
SWITCH_ENV = "POSE_INDEX_CACHE"  # "0" turns the cache off
APP_NAME = "pose-estimation"  # pyproject's project name
RACY_SECONDS = 2.0
KEY_MEMBER = "__key__"
EXTRA_MEMBER = "__extra__"


def cache_dir() -> Path | None:
    """The folder of cache entries, or None when ``POSE_INDEX_CACHE=0`` turns caching off."""
    if os.environ.get(SWITCH_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / APP_NAME


def _json_bytes(value: Any) -> np.ndarray:
    return np.frombuffer(json.dumps(value, sort_keys=True).encode("utf-8"), dtype=np.uint8)


class IndexCache:
    """The cache entry of one reading: ``sources`` (files) read with ``options`` (JSON values)
    by the code in ``modules`` (source files). Get the key before reading the sources: a file
    changed while it is read then fails the next start's check instead of passing it."""

    def __init__(
        self, name: str, sources: Sequence[Path], options: dict[str, Any], modules: Sequence[str | Path] = ()
    ) -> None:
        self.root = cache_dir()
        code = hashlib.sha256()
        for module in (__file__, sys.modules[RecordTable.__module__].__file__, *modules):
            code.update(Path(module).read_bytes())
        resolved = [str(Path(source).resolve()) for source in sources]
        identity = {"sources": resolved, "options": options}
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()[:24]
        # one entry per (files, options): one that is stale (the files or the code changed) is
        # overwritten, not left beside
        self.path = None if self.root is None else self.root / "index" / f"{name}-{digest}.npz"
        self.key: dict[str, Any] = {}
        self.racy = True
        now = time.time()
        try:
            stats = [os.stat(source) for source in resolved]
        except OSError:
            self.path = None  # the reader reports the missing file
            return
        self.key = identity | {"code": code.hexdigest(), "files": [[s.st_size, s.st_mtime_ns] for s in stats]}
        self.racy = any(now - s.st_mtime_ns / 1e9 < RACY_SECONDS for s in stats)

    def load(self) -> tuple[RecordTable, dict[str, Any]] | None:
        """(records, the ``extra`` stored with them) if a current entry exists, else None."""
        if self.path is None or not self.path.is_file():
            return None
        try:
            with np.load(self.path, allow_pickle=False) as members:
                stored_key = json.loads(members[KEY_MEMBER].tobytes().decode("utf-8"))
                if stored_key != json.loads(json.dumps(self.key)):
                    return None  # stale: the file or the code changed since
                extra = json.loads(members[EXTRA_MEMBER].tobytes().decode("utf-8"))
                arrays = {
                    name: members[name] for name in members.files if name not in (KEY_MEMBER, EXTRA_MEMBER)
                }
            return RecordTable.from_arrays(arrays), extra
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, UnicodeDecodeError):
            return None  # unreadable or not ours: parse again, and store() replaces it

    def store(self, records: RecordTable, extra: dict[str, Any]) -> None:
        """Write the entry (atomically); a failure to write is a note on stderr, not an error."""
        if self.path is None or self.racy:
            return
        temporary = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(prefix=self.path.stem, suffix=".tmp", dir=self.path.parent)
            with os.fdopen(handle, "wb") as stream:
                np.savez(
                    stream, **records.to_arrays(), **{KEY_MEMBER: _json_bytes(self.key)},
                    **{EXTRA_MEMBER: _json_bytes(extra)},
                )  # fmt: skip
            os.replace(temporary, self.path)
        except OSError as error:
            print(f"note: could not write the annotation index cache {self.path}: {error}", file=sys.stderr)
            if temporary is not None:
                Path(temporary).unlink(missing_ok=True)
