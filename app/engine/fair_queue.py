"""The engine's waiting queue, shared fairly between tenants (API keys, or client addresses).

Start-time fair queueing (Goyal et al., 1996) over each sequence's cost, its prompt tokens plus its
max_tokens (the work it asks of the engine). A sequence appended for tenant t is tagged

    start  = max(V, finish[t])          V: the start tag of the sequence taken last
    finish[t] = start + cost / weight[t]

and `popleft()` takes the sequence with the smallest start tag (ties: the one appended first).
Within a tenant the order stays first come, first served; with one tenant (or fair sharing off:
every sequence comes with the same empty tenant) the queue is FIFO.

Starvation is bounded: a tenant with nothing waiting that appends a sequence gets start = V, so
that sequence is taken after at most one already-waiting sequence of each other tenant (their
heads, tagged V or less). A tenant's later sequences wait while the others receive service in
proportion to their weights, never longer: every tag is finite and V only grows. A tenant's
history is forgotten whenever the queue empties (no one waits, so no one was wronged).

It offers the scheduler what a deque did: append, popleft, remove (a sequence aborted while
waiting), len, bool and iteration, in the order popleft would take them; and take(seq), for a
scheduler that picks one of the first few it iterated over (e.g. the one reusing the longest cached
prefix): it leaves the queue as if popleft had taken it.
"""

import heapq
import itertools
from collections import deque
from collections.abc import Iterator

from app.engine.sequence import Sequence


class FairQueue:
    def __init__(self):
        self._queues: dict[str, deque[tuple[float, int, Sequence]]] = {}  # per tenant: (start, order, seq)
        self._heads: list[tuple[float, int, str]] = []  # a heap of every tenant queue's head (may hold stale ones)
        self._finish: dict[str, float] = {}  # each tenant's last finish tag
        self._virtual = 0.0  # V
        self._order = itertools.count()
        self._len = 0

    def append(self, seq: Sequence) -> None:
        tenant = seq.tenant
        start = max(self._virtual, self._finish.get(tenant, 0.0))
        self._finish[tenant] = start + (seq.num_prompt_tokens + seq.params.max_tokens) / max(seq.weight, 1e-6)
        item = (start, next(self._order), seq)
        queue = self._queues.setdefault(tenant, deque())
        queue.append(item)
        if len(queue) == 1:
            heapq.heappush(self._heads, (start, item[1], tenant))
        self._len += 1

    def popleft(self) -> Sequence:
        """The waiting sequence with the smallest start tag."""
        while True:
            start, order, tenant = heapq.heappop(self._heads)  # IndexError when empty, as deque's
            queue = self._queues.get(tenant)
            if queue and queue[0][1] == order:  # else a head since removed: skip it
                break
        seq = queue.popleft()[2]
        self._virtual = start
        if queue:
            heapq.heappush(self._heads, (queue[0][0], queue[0][1], tenant))
        else:
            del self._queues[tenant]
        self._taken()
        return seq

    def take(self, seq: Sequence) -> None:
        """This waiting sequence starts being served (the scheduler chose it among the first it
        iterated over): out of the queue, and the virtual time moves on to its start tag."""
        start = self.remove(seq)
        self._virtual = max(self._virtual, start) if self._len else 0.0

    def remove(self, seq: Sequence) -> float:
        """Take this sequence out (it was aborted while waiting) and return its start tag;
        ValueError if it is not here."""
        queue = self._queues.get(seq.tenant)
        index = next((i for i, item in enumerate(queue or ()) if item[2] is seq), None)
        if index is None:
            raise ValueError("the sequence is not waiting")
        start = queue[index][0]
        del queue[index]
        if index == 0 and queue:  # the old head's heap entry is now stale; the new head needs one
            heapq.heappush(self._heads, (queue[0][0], queue[0][1], seq.tenant))
        if not queue:
            del self._queues[seq.tenant]
        self._taken()
        return start

    def _taken(self) -> None:
        self._len -= 1
        if not self._len:  # nobody waits: forget who was served how much
            self._heads.clear()
            self._finish.clear()
            self._virtual = 0.0

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __iter__(self) -> Iterator[Sequence]:
        """The waiting sequences in the order popleft would take them (lazily: the first few are cheap)."""
        return (item[2] for item in heapq.merge(*self._queues.values(), key=lambda item: item[:2]))
