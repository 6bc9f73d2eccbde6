"""Admission: how many sequences each caller may have in the engine, shared fairly.

The counts live in one table that every API process maps (a file in the supervisor's private
directory when GPT2_API_SERVERS > 1, private memory otherwise): a row per API process, written by
that process only, and a column per tenant slot (one per API key, then a fixed number of buckets
that client addresses hash into). Reading sums the rows, so every process sees the same totals:
the engine's capacity, the fair shares and GPT2_KEY_CONCURRENCY hold across API processes. (Two
processes admitting in the same instant may each pass a check the other's admission would have
failed: the overshoot is at most one request per process.) The supervisor zeroes the row of an API
process that died.

The policy (`Admission.admit`): a request of n sequences is admitted while the engine holds fewer
than its capacity (running slots + GPT2_MAX_QUEUE); beyond that, with fair sharing on, a tenant
holding less than its weighted share of the capacity (capacity x its weight / the weights of the
tenants with sequences in flight, itself included) may still use a reserve of a quarter of the
capacity. A caller that filled the queue alone thus never locks the others out, and the total
stays bounded (capacity + reserve).
"""

import mmap
import os
from dataclasses import dataclass

import numpy as np

SEQUENCES, REQUESTS = 0, 1  # the table's two counters: engine sequences, HTTP requests in flight
RESERVE_SHARE = 0.25  # of the capacity, kept for tenants under their fair share
ADDRESS_BUCKETS = 256  # slots that client addresses hash into (callers without API keys)


class QueueFullError(Exception):
    """Admitting these sequences would exceed what the engine (or this caller's share) allows."""


@dataclass(frozen=True)
class Tenant:
    """Who shares capacity: an API key, or a client address when the server has no keys.

    `name` is what the engine's fair queue groups by ("key:3", "addr:10.0.0.7"; never a secret),
    `key_class` the label of the metrics, `slot` the column of the shared table."""

    name: str
    key_class: str
    slot: int
    weight: float = 1.0


class ShareTable:
    """Counts by (API process, counter, tenant slot), summed over processes when read."""

    def __init__(self, rows: int, slots: int, path: str | None = None):
        self.rows, self.slots, self.path = rows, slots, path
        shape = (rows, 2, slots)
        if path is None:
            self._map = None
            self.counts = np.zeros(shape, dtype=np.int64)
            return
        with open(path, "r+b") as f:
            self._map = mmap.mmap(f.fileno(), 0)
        self.counts = np.ndarray(shape, dtype=np.int64, buffer=self._map)

    @classmethod
    def create(cls, path: str, rows: int, slots: int) -> "ShareTable":
        """A zeroed table in a file that other processes open with ShareTable(rows, slots, path)."""
        with open(path, "wb") as f:
            f.truncate(rows * 2 * slots * 8)
        os.chmod(path, 0o600)
        return cls(rows, slots, path)

    def held(self, counter: int, slot: int) -> int:
        return int(self.counts[:, counter, slot].sum())

    def total(self, counter: int) -> int:
        return int(self.counts[:, counter].sum())

    def by_slot(self, counter: int) -> np.ndarray:
        return self.counts[:, counter].sum(axis=0)

    def clear_row(self, row: int) -> None:
        self.counts[row] = 0


class Admission:
    """The admission decisions of one API process (it writes row `row` of the table)."""

    def __init__(self, table: ShareTable, row: int, capacity: int, weights: np.ndarray, fair: bool):
        self.table, self.row, self.capacity, self.fair = table, row, capacity, fair
        self.weights = weights  # per slot
        self.reserve = max(1, int(capacity * RESERVE_SHARE))
        self._mine = table.counts[row]  # this process's counts: written here only

    def admit(self, tenant: Tenant, n: int) -> None:
        """Count n more sequences for this tenant, or raise QueueFullError saying why not."""
        held = self.table.by_slot(SEQUENCES)
        total = int(held.sum())
        if total + n > self.capacity:
            share = self.share(tenant, held)
            mine = int(held[tenant.slot])
            if not self.fair or mine + n > share:
                raise QueueFullError(f"{total} sequences are running or waiting, {n} more would exceed "
                                     f"{self.capacity}" + (f", and this caller holds {mine} of its share of "
                                                           f"{share:.0f}" if self.fair else ""))
            if total + n > self.capacity + self.reserve:
                raise QueueFullError(f"{total} sequences are running or waiting: even the reserve kept for "
                                     f"callers under their share is taken")
        self._mine[SEQUENCES, tenant.slot] += n

    def release(self, slot: int, n: int = 1) -> None:
        self._mine[SEQUENCES, slot] -= n

    def share(self, tenant: Tenant, held: np.ndarray | None = None) -> float:
        """The tenant's weighted share of the capacity among the tenants now holding sequences."""
        held = self.table.by_slot(SEQUENCES) if held is None else held
        active = float(self.weights[held > 0].sum()) + (tenant.weight if held[tenant.slot] <= 0 else 0.0)
        return self.capacity * tenant.weight / active

    # --- HTTP requests in flight, per key (GPT2_KEY_CONCURRENCY) -----------------------------
    def requests_held(self, slot: int) -> int:
        return self.table.held(REQUESTS, slot)

    def add_request(self, slot: int, n: int) -> None:
        self._mine[REQUESTS, slot] += n
