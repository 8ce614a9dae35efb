"""Shared builders for the store, rating and generation tests (plain functions, not fixtures, so a test
module opts in explicitly and hypothesis tests can use them without function-scoped fixtures)."""

from __future__ import annotations

import os

from radcore.rating import put_rate_table
from radcore.store import RateTable, Series, Store

NOW = 1_700_000_000  # 2023-11-14T22:13:20Z


def open_store(path: str | os.PathLike, **kwargs) -> Store:
    """A real LMDB store; fsync off because tests do not survive power loss anyway."""
    kwargs.setdefault("sync", False)
    kwargs.setdefault("map_size", 256 << 20)
    return Store(path, **kwargs)


def add_rate_table(store: Store, name: str = "std", currency: str = "USD") -> RateTable:
    table = RateTable(name=name, currency=currency, description="test", created_at=NOW)
    with store.transaction(write=True) as txn:
        put_rate_table(txn, store, table)
    return table


def new_series(number: int = 45, **overrides) -> Series:
    values = dict(number=number, name=f"test {number}", quantity=100, face_balance=5_000_000,
                  pin_length=10, rate_table="std")
    values.update(overrides)
    return Series(**values)
