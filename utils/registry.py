"""Names -> entries (the models' and the datasets' registries) and the project's one "did you
mean": every error that names an unknown word suggests a near miss through :func:`close_match`,
with one idea of what is near."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

# difflib's similarity ratio from which a word is taken for a slip of the choice it resembles
# (difflib's own default): "Hourglass" -> StackedHourGlass (0.64), "Adamm" -> Adam, "MPI" -> MPII.
CLOSE_ENOUGH = 0.6

Entry = TypeVar("Entry")


def close_match(word: object, choices: Iterable[str]) -> str | None:
    """The choice most like ``word``, when it is like enough to be what was meant; else None."""
    found = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=CLOSE_ENOUGH)
    return found[0] if found else None


def did_you_mean(word: object, choices: Iterable[str], otherwise: str = "") -> str:
    """``; did you mean 'choice'?`` for the choice :func:`close_match` finds, else ``otherwise``."""
    close = close_match(word, choices)
    return f"; did you mean {close!r}?" if close is not None else otherwise


class UnknownNameError(KeyError):
    """A name no registry entry has; its message is one line (a KeyError's would be quoted)."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(Generic[Entry]):
    """Entries under names, looked up case-insensitively; an unknown name raises ``error`` in one
    line that lists the names and suggests a near miss, never taking it.

    ``kind`` names the registry in messages ("model"); ``names`` are listed sorted, or in
    registration order with ``sort=False``; ``load`` (when given) runs before every lookup and
    listing, to import the modules whose decorators fill the registry."""

    def __init__(
        self,
        kind: str,
        error: type[UnknownNameError] = UnknownNameError,
        *,
        sort: bool = True,
        load: Callable[[], None] | None = None,
    ) -> None:
        self.kind, self.error, self.sort, self.load = kind, error, sort, load
        self._entries: dict[str, Entry] = {}
        self._canonical: dict[str, str] = {}  # lower-cased name -> the registered spelling

    def add(self, name: str, entry: Entry) -> None:
        if name.lower() in self._canonical:
            raise ValueError(f"{self.kind} name {name!r} is already registered")
        self._entries[name] = entry
        self._canonical[name.lower()] = name

    def remove(self, name: str) -> None:
        """Take ``name`` out again (a test's probe entry)."""
        del self._entries[self._canonical.pop(name.lower())]

    def _loaded(self) -> dict[str, Entry]:
        if self.load is not None:
            self.load()
        return self._entries

    def names(self) -> list[str]:
        entries = self._loaded()
        return sorted(entries) if self.sort else list(entries)

    def get(self, name: str) -> Entry:
        """The entry registered as ``name`` in any case; ``error`` for any other name."""
        entries = self._loaded()
        canonical = self._canonical.get(str(name).lower())
        if canonical is None:
            choices = self.names()
            raise self.error(
                f"unknown {self.kind} {name!r}: choose one of {', '.join(choices)}{did_you_mean(name, choices)}"
            )
        return entries[canonical]
