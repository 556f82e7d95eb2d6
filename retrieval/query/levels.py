"""What an account usually gets: its shrunk mean of log1p(likes), falling back to its company's
and then to a base level. The likes predictor starts from it, and engagement ranking divides by it."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from statistics import pstdev

from retrieval.schema import account

ACCOUNT_SHRINK = 0.75
"""Pseudo-count pulling an account's mean towards its company's (tuned by CV, docs/likes.md)."""
COMPANY_SHRINK = 0.5
"""Pseudo-count pulling a company's mean towards the base level."""


def key(name: str | None) -> str | None:
    """Accounts and companies match case-insensitively, as the search filters do."""
    return name.strip().lower() if name and name.strip() else None


def account_key(name: str | None) -> str | None:
    """An account's key: case-insensitive, with or without its "@" (`schema.account`)."""
    return key(account(name))


@dataclass(frozen=True)
class Prior:
    """The account's expected log1p(likes) before looking at the text, and where it came from."""

    value: float
    source: str
    """account, company or base: the most specific level that had tweets."""
    account_tweets: int
    company_tweets: int
    company: str | None


@dataclass(frozen=True)
class GroupStats:
    """Counts and sums of log1p(likes) per account and company, over what one query may see."""

    accounts: Mapping[str, tuple[int, float]]
    companies: Mapping[str, tuple[int, float]]
    account_company: Mapping[str, str]
    count: int
    total: float
    total_sq: float

    @classmethod
    def from_groups(
        cls, groups: Sequence[tuple[str | None, str | None, int, float, float]], account_company: Mapping[str, str]
    ) -> GroupStats:
        """Fold (account, company, n, sum, sum of squares) groups into per-level sums."""
        accounts: dict[str, tuple[int, float]] = {}
        companies: dict[str, tuple[int, float]] = {}
        for user, company, n, total, _ in groups:
            for table, name in ((accounts, user), (companies, company)):
                if name is not None:
                    old_n, old_total = table.get(name, (0, 0.0))
                    table[name] = (old_n + int(n), old_total + float(total))
        count = sum(int(g[2]) for g in groups)
        return cls(
            accounts,
            companies,
            account_company,
            count,
            sum(float(g[3]) for g in groups),
            sum(float(g[4]) for g in groups),
        )

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    @property
    def std(self) -> float:
        return math.sqrt(max(self.total_sq / self.count - self.mean**2, 0.0)) if self.count else 1.0

    def account_spread(self, company: str | None) -> float:
        """The spread (std) of the account means within `company`, or among all accounts when it
        has fewer than two (or none is given): how far a new account's level may fall from the
        level it borrows. Neighbours' residuals, measured against their own accounts, do not
        hold this part."""
        spreads = self._account_spreads
        return spreads.get(key(company) or "", spreads[""]) if company else spreads[""]

    @cached_property
    def _account_spreads(self) -> dict[str, float]:
        """Std of the account means per company with at least two accounts; "" for all accounts."""
        groups: dict[str, list[float]] = {}
        for user, (n, total) in self.accounts.items():
            if n and (company := self.account_company.get(user)):
                groups.setdefault(company, []).append(total / n)
        every = [total / n for n, total in self.accounts.values() if n]
        out = {name: pstdev(means) for name, means in groups.items() if len(means) >= 2}
        out[""] = pstdev(every) if every else 0.0
        return out

    def prior(
        self,
        username: str | None,
        company: str | None,
        base: float,
        shrink: tuple[float, float] = (ACCOUNT_SHRINK, COMPANY_SHRINK),
        leave_out: float | None = None,
    ) -> Prior:
        """Shrunk account mean over company mean over base (pseudo-counts `shrink`, account then
        company); `leave_out` removes one tweet of both."""
        user = account_key(username)
        comp = key(company) or (self.account_company.get(user) if user else None)
        n_a, s_a = self.accounts.get(user, (0, 0.0)) if user else (0, 0.0)
        n_c, s_c = self.companies.get(comp, (0, 0.0)) if comp else (0, 0.0)
        if leave_out is not None:
            n_a, s_a = (n_a - 1, s_a - leave_out) if n_a else (0, 0.0)
            n_c, s_c = (n_c - 1, s_c - leave_out) if n_c else (0, 0.0)
        account_shrink, company_shrink = shrink
        m_c = (s_c + company_shrink * base) / (n_c + company_shrink)
        m_a = (s_a + account_shrink * m_c) / (n_a + account_shrink)
        source = "account" if n_a > 0 else "company" if n_c > 0 else "base"
        return Prior(m_a, source, n_a, n_c, comp)
