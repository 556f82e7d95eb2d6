"""Metadata filters of a search, bound as SQL parameters."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from retrieval.schema import ACCOUNT_SQL, account


@dataclass(frozen=True)
class Filters:
    """Metadata filters; each is bound as a SQL parameter, never pasted into the query."""

    username: str | None = None
    company: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    min_likes: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "username", account(self.username))

    def where(self) -> tuple[str, list[Any]]:
        """A WHERE clause over `tweets` (TRUE when nothing is filtered) and its parameters."""
        clauses, params = ["TRUE"], []
        if self.username:
            clauses.append(f"{ACCOUNT_SQL} = lower(?)")
            params.append(self.username)
        if self.company:
            clauses.append("lower(company) = lower(?)")
            params.append(self.company)
        if self.since:
            clauses.append("date >= ?")
            params.append(self.since)
        if self.until:
            clauses.append("date <= ?")
            params.append(self.until)
        if self.min_likes is not None:
            clauses.append("likes >= ?")
            params.append(self.min_likes)
        return " AND ".join(clauses), params

    def active(self) -> bool:
        return any(v is not None for v in (self.username, self.company, self.since, self.until, self.min_likes))


def whole_day(until: dt.datetime | None) -> dt.datetime | None:
    """An `until` without a time of day (midnight) means to the end of that day, as people mean it."""
    if until is not None and until.time() == dt.time(0):
        return until + dt.timedelta(days=1) - dt.timedelta(microseconds=1)
    return until
