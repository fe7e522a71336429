"""Person records as columns of numpy arrays, read as a sequence of small dicts.

A reader used to keep one dict per person (a few small numpy arrays, floats, a path string):
about 1.2 KB of Python objects each, and every DataLoader worker slowly copied the pages they
live on, because merely reading a Python object writes its reference count, and the garbage
collector writes into every container it visits (copy-on-access after ``fork``). A :class:`RecordTable` keeps a handful of large arrays instead (a 150,000-person
COCO file takes tens of MB), whose data pages a worker only reads, so they stay shared.

``table[i]`` builds a fresh dict with the same keys and value types the readers produced
before: numpy arrays (copies, so a caller may modify them), Python ``float``, ``int``, ``str``,
and tuples of ints (or None). Consumers keep reading ``record["joints"]`` and never see the
columns; vectorised code may take a whole column with :meth:`RecordTable.column`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, overload

import numpy as np

# Column kinds: how a record's value is stored and given back.
ARRAY = "array"  # (N, ...) numpy array; a record gets a copy of its row
FLOAT = "float"  # (N,) float64; a record gets a Python float
INT = "int"  # (N,) int64; a record gets a Python int
STR = "str"  # (N,) int32 codes into a pool of distinct strings (UTF-8 bytes + offsets); a str
TUPLE = "tuple"  # (N, m) int64 plus an (N,) bool "is None" mask; a tuple of m ints, or None
BIG_INT = "big_int"  # ints beyond int64 (JSON allows them), stored as their decimal strings
PARTS = {ARRAY: 1, FLOAT: 1, INT: 1, STR: 3, TUPLE: 2, BIG_INT: 3}  # arrays per kind
META_KEY = "__records__"  # the member of :meth:`RecordTable.to_arrays` describing the columns


class RecordTable(Sequence[dict[str, Any]]):
    """A read-only sequence of records (dicts) stored column by column in numpy arrays.

    Build one with :meth:`from_records` (or :class:`RecordTableBuilder`, row by row), save it
    with :meth:`to_arrays` and get it back with :meth:`from_arrays`. A slice is a table sharing
    the arrays.
    """

    def __init__(self, length: int, columns: Mapping[str, tuple[str, tuple[np.ndarray, ...]]]) -> None:
        """``columns``: name -> (kind, arrays), in the order the records' keys should have; see
        the module's kinds for the arrays each takes. Checked here, so a table read back from a
        file is either whole or a ValueError."""
        self._length = int(length)
        self._columns: dict[str, tuple[str, tuple[np.ndarray, ...]]] = {}
        for name, (kind, arrays) in columns.items():
            expected = PARTS.get(kind)
            if expected is None or len(arrays) != expected:
                raise ValueError(f"record column {name!r}: kind {kind!r} with {len(arrays)} arrays")
            if len(arrays[0]) != self._length or (kind == TUPLE and len(arrays[1]) != self._length):
                raise ValueError(f"record column {name!r} has {len(arrays[0])} rows, expected {self._length}")
            if kind in (STR, BIG_INT):
                codes, offsets, pool = arrays
                bad_codes = len(codes) and (codes.min() < 0 or codes.max() >= len(offsets) - 1)
                if len(offsets) < 1 or offsets[-1] != len(pool) or bad_codes:
                    raise ValueError(f"record column {name!r}: string codes, offsets and bytes disagree")
            self._columns[name] = (kind, tuple(arrays))

    # -- the sequence of dicts ---------------------------------------------------------------

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, index: slice) -> RecordTable: ...

    def __getitem__(self, index: int | slice) -> dict[str, Any] | RecordTable:
        if isinstance(index, slice):
            return self._take(index)
        i = int(index)  # numpy integers too
        if i < 0:
            i += self._length
        if not 0 <= i < self._length:
            raise IndexError(f"record {index} out of range for {self._length} records")
        record: dict[str, Any] = {}
        for name, (kind, arrays) in self._columns.items():
            if kind == ARRAY:
                record[name] = arrays[0][i].copy()
            elif kind == FLOAT:
                record[name] = float(arrays[0][i])
            elif kind == INT:
                record[name] = int(arrays[0][i])
            elif kind in (STR, BIG_INT):
                codes, offsets, pool = arrays
                code = codes[i]
                text = pool[offsets[code] : offsets[code + 1]].tobytes().decode("utf-8", "surrogatepass")
                record[name] = text if kind == STR else int(text)
            else:
                values, missing = arrays
                record[name] = None if missing[i] else tuple(int(v) for v in values[i])
        return record

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(self._length):
            yield self[i]

    def __repr__(self) -> str:
        return f"RecordTable({self._length} records: {', '.join(self._columns)}; {self.nbytes / 1e6:.1f} MB)"

    def _take(self, rows: slice) -> RecordTable:
        columns = {}
        for name, (kind, arrays) in self._columns.items():
            if kind in (STR, BIG_INT):  # the pool stays whole: codes index it
                columns[name] = (kind, (arrays[0][rows], arrays[1], arrays[2]))
            else:
                columns[name] = (kind, tuple(a[rows] for a in arrays))
        return RecordTable(len(range(*rows.indices(self._length))), columns)

    # -- columns -----------------------------------------------------------------------------

    @property
    def keys(self) -> tuple[str, ...]:
        """The keys of every record, in order."""
        return tuple(self._columns)

    def column(self, name: str) -> np.ndarray:
        """All records' values of an array, float or int column, stacked: (N, ...) (read-only view)."""
        kind, arrays = self._columns[name]
        if kind not in (ARRAY, FLOAT, INT):
            raise TypeError(f"record column {name!r} holds {kind} values; column() gives numeric ones")
        view = arrays[0].view()
        view.flags.writeable = False
        return view

    @property
    def nbytes(self) -> int:
        """Bytes held by the columns' arrays."""
        return sum(a.nbytes for _, arrays in self._columns.values() for a in arrays)

    # -- building and saving -----------------------------------------------------------------

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]]) -> RecordTable:
        """The table of dicts that all have the same keys, with values of one type per key."""
        builder = RecordTableBuilder()
        for record in records:
            builder.append(record)
        return builder.build()

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain numpy arrays (no objects) holding the whole table, e.g. for ``np.savez``."""
        spec = {
            "length": self._length,
            "columns": [[name, kind] for name, (kind, _) in self._columns.items()],
        }
        result = {META_KEY: np.frombuffer(json.dumps(spec).encode("utf-8"), dtype=np.uint8)}
        for position, (_, arrays) in enumerate(self._columns.values()):
            for part, array in enumerate(arrays):
                result[f"c{position}_{part}"] = np.ascontiguousarray(array)
        return result

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> RecordTable:
        """The table :meth:`to_arrays` gave; ValueError, KeyError or TypeError if ``arrays`` is
        not one."""
        spec = json.loads(np.asarray(arrays[META_KEY], dtype=np.uint8).tobytes().decode("utf-8"))
        columns = {}
        for position, (name, kind) in enumerate(spec["columns"]):
            parts = PARTS.get(kind, 0)
            columns[name] = (kind, tuple(np.asarray(arrays[f"c{position}_{part}"]) for part in range(parts)))
        return cls(spec["length"], columns)


CHUNK = 4096  # rows of an array column stacked at a time


def _stack(key: str, rows: list[Any], shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """(len(rows), *shape) array of ``rows``, or TypeError naming the key and the odd row."""
    bad = next((r for r in rows if not (isinstance(r, np.ndarray) and r.shape == shape)), None)
    if bad is not None:
        what = f"an array of shape {bad.shape}" if isinstance(bad, np.ndarray) else type(bad).__name__
        raise TypeError(f"record key {key!r} holds {what}, expected arrays of shape {shape}")
    return np.array(rows, dtype=dtype).reshape(len(rows), *shape)


class RecordTableBuilder:
    """Collects records one at a time for a :class:`RecordTable`.

    Arrays are stacked into their column every few thousand rows, so a column never exists as
    many small array objects; other values are kept as Python objects until :meth:`build`
    (floats and ints are small; a path string is usually shared by the persons of one image).
    Every record must have the first record's keys; a key's values must be all numpy arrays of
    one shape (stored in the first one's dtype), all ints, all numbers (ints and floats: stored
    as floats), all strings, or all tuples of as many ints or None.
    """

    def __init__(self) -> None:
        self._keys: tuple[str, ...] = ()
        self._arrays: list[
            tuple[str, list[Any], list[np.ndarray], np.ndarray]
        ] = []  # key, rows, chunks, first
        self._values: list[tuple[str, list[Any]]] = []
        self._length = 0

    def __len__(self) -> int:
        return self._length

    def append(self, record: Mapping[str, Any]) -> None:
        if not self._length:
            self._keys = tuple(record)
            self._arrays = [(k, [], [], v) for k, v in record.items() if isinstance(v, np.ndarray)]
            self._values = [(k, []) for k, v in record.items() if not isinstance(v, np.ndarray)]
        elif tuple(record) != self._keys and (
            len(record) != len(self._keys) or set(record) != set(self._keys)
        ):
            raise ValueError(
                f"record {self._length} has keys {sorted(record)}, expected {sorted(self._keys)}"
            )
        for key, rows, _, _ in self._arrays:
            rows.append(record[key])
        for key, values in self._values:
            values.append(record[key])
        self._length += 1
        if self._length % CHUNK == 0:
            self._stack_rows()

    def _stack_rows(self) -> None:
        for key, rows, chunks, first in self._arrays:
            if rows:
                chunks.append(_stack(key, rows, first.shape, first.dtype))
                rows.clear()

    def build(self) -> RecordTable:
        """The table of the records so far."""
        self._stack_rows()
        columns: dict[str, tuple[str, tuple[np.ndarray, ...]]] = {}
        arrays = {key: chunks for key, _, chunks, _ in self._arrays}
        values = dict(self._values)
        for key in self._keys:
            if key in arrays:
                chunks = arrays[key]
                columns[key] = (ARRAY, (chunks[0] if len(chunks) == 1 else np.concatenate(chunks),))
            else:
                columns[key] = _value_column(key, values[key])
        return RecordTable(self._length, columns)


def _is_int_type(kind: type) -> bool:
    return issubclass(kind, int) and not issubclass(kind, bool)


def _value_column(key: str, values: list[Any]) -> tuple[str, tuple[np.ndarray, ...]]:
    """(kind, arrays) of a column of Python values (see :class:`RecordTableBuilder`)."""
    types = set(map(type, values))  # a few distinct types: the checks below stay cheap
    if all(_is_int_type(t) for t in types):
        try:
            return INT, (np.array(values, dtype=np.int64).reshape(len(values)),)
        except OverflowError:
            return BIG_INT, _string_pool([str(v) for v in values])
    if all(_is_int_type(t) or issubclass(t, float) for t in types):
        return FLOAT, (np.array(values, dtype=np.float64).reshape(len(values)),)
    if all(issubclass(t, str) for t in types):
        return STR, _string_pool(values)
    if types <= {tuple, type(None)}:
        distinct = set(values) - {None}  # tuples are usually shared (an image's size)
        widths = {len(v) for v in distinct}
        if len(widths) <= 1 and all(_is_int_type(type(x)) for v in distinct for x in v):
            width = widths.pop() if widths else 0
            missing = np.array([v is None for v in values], dtype=bool)
            rows = np.array([(0,) * width if v is None else v for v in values], dtype=np.int64)
            return TUPLE, (rows.reshape(len(values), width), missing)
    kinds = sorted({t.__name__ for t in types})
    raise TypeError(f"record key {key!r} holds {', '.join(kinds)} values; a RecordTable cannot store them")


def _string_pool(values: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes (N,) int32, offsets (M + 1,) int64, UTF-8 bytes) of N strings with M distinct ones."""
    index: dict[str, int] = {}
    codes = np.fromiter((index.setdefault(v, len(index)) for v in values), dtype=np.int32, count=len(values))
    encoded = [s.encode("utf-8", "surrogatepass") for s in index]  # JSON may hold lone surrogates
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(b) for b in encoded], dtype=np.int64)
    return codes, offsets, np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
