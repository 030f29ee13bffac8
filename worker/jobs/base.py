"""What a job kind provides to the engine: how to apply one batch of its items."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from listmill.db import Connection
from listmill.records import JobRow

# (row_number, email, code, message), as the error report shows it
ErrorRow = tuple[int | None, str | None, str, str]


@dataclass
class BatchOutcome:
    counts: Counter[str] = field(default_factory=Counter)
    errors: list[ErrorRow] = field(default_factory=list)

    def error(self, row_number: int, email: str | None, code: str, message: str) -> None:
        self.errors.append((row_number, email, code, message))


# apply(conn, job, items, first_row_number) — runs inside the batch's transaction
ApplyBatch = Callable[[Connection, JobRow, list[Any], int], Awaitable[BatchOutcome]]
