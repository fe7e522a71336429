"""Corrupt data and hostile paths: the checks the MPII and COCO-format readers apply.

Two kinds of checks, each where it is cheapest:

- **record checks** run when an annotation file is read, on every record at once (shapes, NaN
  and inf, negative scales, visibility flags, degenerate boxes, joints far outside the image
  when the file gives its size, image paths leaving the image folder). A bad record is an error
  naming the file and the record; with ``--skipBadSamples 1`` it is dropped instead and listed.
- **image checks** run when a sample is loaded (:func:`read_image_bytes`): a missing or empty
  file, a file that is not an image, a JPEG or PNG cut short (OpenCV decodes the top of a
  truncated JPEG and fills the rest with grey without an error, so the end-of-image marker is
  checked), and joints far outside the decoded image.

:class:`BadDataPolicy` carries the three options that decide what happens to bad data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# A labelled joint (or a box centre) may lie outside the image by at most this fraction of the
# image's larger side; farther out it is garbage (wrong units, swapped axes, another image's).
OUTSIDE_MARGIN = 0.5
SKIP_HINT = "--skipBadSamples 1 skips bad samples"
OUTSIDE_HINT = "--allowOutsidePaths 1 allows it"
VISIBILITY_FLAGS = (0.0, 1.0, 2.0)

JPEG_START, JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"
PNG_START, PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"


@dataclass(frozen=True)
class BadDataPolicy:
    """What to do with bad data (``--skipBadSamples``, ``--maxBadFraction``, ``--allowOutsidePaths``).

    ``skip``: drop bad records when the annotation file is read and replace a sample whose image
    turns out bad by the next good one, instead of stopping. ``max_fraction``: even then, stop
    when more than this fraction of the records is bad. ``allow_outside_paths``: accept image
    paths in annotation files that are absolute or leave the image folder with ``..``.
    """

    skip: bool = False
    max_fraction: float = 0.01
    allow_outside_paths: bool = False

    def too_many(self, bad: int, total: int) -> bool:
        return bad > 0 and bad > self.max_fraction * total


class BadRecord(ValueError):
    """One record's problem (internal to the readers: it becomes a line of :class:`RecordChecker`)."""


def show(value: Any, limit: int = 40) -> str:
    """A short printable form of a value from a data file, on one line."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def numbers(value: Any, count: int, what: str) -> np.ndarray:
    """``value`` (any nesting of lists) as ``count`` float64 numbers, or :class:`BadRecord`."""
    try:
        raw = np.asarray(value)
    except (TypeError, ValueError, OverflowError):
        raise BadRecord(f"{what} is {show(value)}, not a list of numbers") from None
    if raw.dtype.kind not in "biuf":  # strings, None, ragged or nested objects
        raise BadRecord(f"{what} is {show(value)}, not a list of numbers")
    if raw.size != count:
        raise BadRecord(f"{what} has {raw.size} values, expected {count}")
    return raw.astype(np.float64).reshape(-1)


def finite(array: np.ndarray, what: str) -> np.ndarray:
    """``array`` if every value is finite, else :class:`BadRecord` naming the first that is not."""
    bad = ~np.isfinite(array)
    if bad.any():
        position = int(np.flatnonzero(bad.reshape(-1))[0])
        raise BadRecord(f"{what} value {position} is {float(array.reshape(-1)[position])} (not finite)")
    return array


def check_visibility(flags: np.ndarray, what: str) -> None:
    bad = ~np.isin(flags, VISIBILITY_FLAGS)
    if bad.any():
        position = int(np.flatnonzero(bad)[0])
        raise BadRecord(f"{what} {position} is {float(flags[position]):g}, not 0, 1 or 2")


def check_inside(points: np.ndarray, width: float, height: float, names: list[str]) -> None:
    """``points`` (N, 2) 0-based px must lie within the image extended by ``OUTSIDE_MARGIN`` of its
    larger side, else :class:`BadRecord` naming the first point outside (``names``, one per point)."""
    margin = OUTSIDE_MARGIN * max(width, height)
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    outside = (
        (points < -margin).any(axis=1)
        | (points[:, 0] > width - 1 + margin)
        | (points[:, 1] > height - 1 + margin)
    )
    if outside.any():
        row = int(np.flatnonzero(outside)[0])
        x, y = points[row]
        raise BadRecord(
            f"{names[row]} at ({x:g}, {y:g}) is far outside the {width:g}x{height:g} (w x h) image"
        )


def image_path(image_dir: Path, name: Any, allow_outside: bool) -> Path:
    """``image_dir / name`` for an image named by an annotation file, refusing (``BadRecord``) a
    name that is absolute or leaves ``image_dir`` through ``..`` unless ``allow_outside``.

    The check is on the name as written (lexical), so a symlinked image folder still works."""
    if not isinstance(name, str) or not name:
        raise BadRecord(f"image name {show(name)} is not a file name")
    if "\0" in name:
        raise BadRecord(f"image name {show(name)} contains a NUL byte")
    if not allow_outside:
        if os.path.isabs(name):
            raise BadRecord(
                f"image path {name!r} is absolute, outside the image folder {image_dir} ({OUTSIDE_HINT})"
            )
        parts = Path(os.path.normpath(name)).parts
        if parts and parts[0] == "..":
            raise BadRecord(f"image path {name!r} leaves the image folder {image_dir} ({OUTSIDE_HINT})")
    return image_dir / name


class RecordChecker:
    """Collects the bad records of one annotation file, each a line naming the file and record.

    ``finish()`` raises the first as a :class:`DataError` (with the count of the others) unless
    the policy skips bad samples; then it returns them all, to be listed in bad_samples.txt."""

    def __init__(self, source: str | Path, policy: BadDataPolicy) -> None:
        self.source, self.policy = str(source), policy
        self.problems: list[str] = []

    def bad(self, where: str, problem: str) -> None:
        self.problems.append(f"{self.source}: {where}: {problem}")

    def finish(self) -> list[str]:
        from datasets.base import DataError

        if self.problems and not self.policy.skip:
            others = len(self.problems) - 1
            more = f"; {others} more bad record{'s' if others > 1 else ''} in this file" if others else ""
            raise DataError(f"{self.problems[0]}{more} ({SKIP_HINT})")
        return list(self.problems)


def describe_start(data: bytes) -> str:
    if not data:
        return "the file is empty (0 bytes)"
    for start, kind in ((JPEG_START, "JPEG"), (PNG_START, "PNG")):
        if data.startswith(start):
            return f"a corrupt {kind}"
    head = data[:12]
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return f"the file starts with text {show(head.decode('ascii'), 30)}, not an image format"
    return f"the file starts with bytes {head[:8].hex(' ')}, not an image format OpenCV reads"


def _decodes_completely(data: bytes) -> bool:
    """Whether Pillow decodes the whole image (it raises on a file cut short). Asked only of the
    rare JPEG or PNG whose last bytes are not its end marker: trailing data after a complete
    image (a phone's motion-photo video, padding) is allowed, a cut-off file is not."""
    import io

    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            image.load()
        return True
    except Exception:  # noqa: BLE001 - any failure to decode means the file is not complete
        return False


def check_image_bytes(data: bytes, path: str | Path) -> None:
    """Raise DataError for an empty file, or a JPEG or PNG that is cut short; cheap for a complete
    file (its last bytes are compared with the format's end marker)."""
    from datasets.base import DataError

    if not data:
        raise DataError(f"cannot read image {path}: empty file (0 bytes)")
    for start, end, kind, marker in (
        (JPEG_START, JPEG_END, "JPEG", "end-of-image marker FF D9"),
        (PNG_START, PNG_END, "PNG", "IEND chunk"),
    ):
        if data.startswith(start):
            if not data[-1024:].rstrip(b"\0\r\n\t ").endswith(end) and not _decodes_completely(data):
                raise DataError(
                    f"cannot read image {path}: truncated {kind} ({len(data)} bytes, no {marker} at the end)"
                )
            return
