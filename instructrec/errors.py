"""Errors a user can act on: each names the file, the column and the rule."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Violation:
    table: str
    column: str | None
    rule: str
    unexpected: int | None = None
    total: int | None = None
    examples: tuple[str, ...] = ()
    rows: tuple[int, ...] = ()

    def describe(self) -> str:
        where = f"column '{self.column}'" if self.column else "the table"
        count = f" ({self.unexpected} of {self.total} rows)" if self.unexpected is not None and self.total else ""
        sample = ""
        if self.examples:
            shown = ", ".join(self.examples[:5])
            rows = f" at rows {', '.join(map(str, self.rows[:5]))}" if self.rows else ""
            sample = f"; e.g. {shown}{rows}"
        return f"{where} broke '{self.rule}'{count}{sample}"


@dataclass(repr=False)
class DataValidationError(Exception):
    """Bad input: raised before anything downstream (training, registry) runs."""

    file: str
    violations: list[Violation] = field(default_factory=list)
    snapshot_kept: bool = True  # False: refused before a snapshot was taken (a file over the size limit)

    def __str__(self) -> str:
        table = self.violations[0].table if self.violations else "?"
        parts = "; ".join(v.describe() for v in self.violations)
        kept = "the raw snapshot was kept for inspection" if self.snapshot_kept else "the file was not read"
        return f"Invalid {table} data in {self.file}: {parts}. Nothing was trained or registered; {kept}."

    def __repr__(self) -> str:
        return f"DataValidationError({self.file!r}: {len(self.violations)} violation(s))"


class SourceError(Exception):
    """A source could not be read or fetched (missing file, bad checksum)."""


class TrackingStoreError(Exception):
    """The experiment store (MLflow's database) cannot be written: checked before any run starts."""


class StopSignal(BaseException):
    """A stop signal (SIGTERM, SIGINT) ended the run: not an error in the run, so not an `Exception`."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def stop_signal_of(exc: BaseException) -> int | None:
    """The signal that stopped a run, where `exc` is how it unwound: ours, Prefect's TerminationSignal (which
    carries `.signal`), or Python's KeyboardInterrupt; None for a failure."""
    if isinstance(exc, StopSignal):
        return exc.signum
    if isinstance(exc, KeyboardInterrupt):
        return signal.SIGINT
    number = getattr(exc, "signal", None)
    return int(number) if isinstance(number, int) and not isinstance(exc, Exception) else None
