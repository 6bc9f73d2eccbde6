"""The engine's waiting queue (app/engine/fair_queue.py): FIFO within a tenant, weighted fair between
tenants, and a newcomer waits behind at most one sequence of each other waiting tenant."""

import random

import pytest

from app.engine.fair_queue import FairQueue
from app.engine.protocol import FinishReason, SamplingParams
from app.engine.scheduler import Scheduler
from app.engine.sequence import Sequence


def seq(name: str, tenant: str = "", prompt: int = 10, max_tokens: int = 10, weight: float = 1.0) -> Sequence:
    return Sequence(name, [1] * prompt, SamplingParams(max_tokens=max_tokens), tenant=tenant, weight=weight)


def drain(queue: FairQueue) -> list[str]:
    return [queue.popleft().request_id for _ in range(len(queue))]


def test_one_tenant_is_first_come_first_served():
    queue = FairQueue()
    for i in range(20):
        queue.append(seq(f"s{i}", prompt=random.Random(i).randint(1, 500)))
    assert len(queue) == 20 and queue
    assert drain(queue) == [f"s{i}" for i in range(20)]
    assert not queue
    with pytest.raises(IndexError):
        queue.popleft()


def test_a_newcomer_waits_behind_at_most_one_sequence_of_each_other_tenant():
    queue = FairQueue()
    for i in range(200):
        queue.append(seq(f"alpha{i}", "alpha"))
    for i in range(50):
        queue.append(seq(f"gamma{i}", "gamma"))
    queue.popleft()
    queue.append(seq("beta0", "beta", prompt=1, max_tokens=1))
    order = drain(queue)
    assert order.index("beta0") <= 2  # after at most one alpha and one gamma


def test_tenants_share_in_proportion_to_their_weights():
    queue = FairQueue()
    for i in range(300):
        queue.append(seq(f"a{i}", "a"))
        queue.append(seq(f"b{i}", "b", weight=3.0))
    first = drain(queue)[:200]
    b = sum(name.startswith("b") for name in first)
    assert 145 <= b <= 155  # 3:1


def test_work_not_sequences_is_shared():
    queue = FairQueue()
    for i in range(50):
        queue.append(seq(f"big{i}", "big", prompt=90, max_tokens=10))  # cost 100 each
        queue.append(seq(f"small{i}", "small", prompt=5, max_tokens=5))  # cost 10 each
    first = drain(queue)[:22]
    assert sum(name.startswith("small") for name in first) == 20  # ten small ones per big one


def test_iteration_is_in_the_order_sequences_would_be_taken():
    queue = FairQueue()
    for i in range(30):
        queue.append(seq(f"s{i}", f"t{i % 3}", prompt=1 + i % 7, weight=1 + i % 2))
    assert [s.request_id for s in queue] == drain(queue)


def test_taking_one_of_the_first_few_moves_time_on_but_an_abort_does_not():
    def queue_with(how: str) -> list[str]:
        queue = FairQueue()
        for i in range(4):
            queue.append(seq(f"a{i}", "a"))  # tags 0, 20, 40, 60
            queue.append(seq(f"b{i}", "b"))
        third = [s for s in queue][2]  # a1, tagged 20
        getattr(queue, how)(third)
        queue.append(seq("c0", "c"))
        return [s.request_id for s in queue]

    # served (e.g. chosen for the prefix it reuses): time moves on to its tag, a newcomer queues from there
    assert queue_with("take")[:4] == ["a0", "b0", "b1", "c0"]
    assert queue_with("remove")[:3] == ["a0", "b0", "c0"]  # aborted: nobody was served, time stays


def test_remove_takes_a_waiting_sequence_out_even_at_the_head():
    queue = FairQueue()
    seqs = [seq(f"x{i}", "ab"[i % 2]) for i in range(6)]
    for s in seqs:
        queue.append(s)
    queue.remove(seqs[0])  # a's head
    queue.remove(seqs[3])
    assert [s.request_id for s in queue] == ["x1", "x2", "x4", "x5"]
    assert drain(queue) == ["x1", "x2", "x4", "x5"]
    with pytest.raises(ValueError):
        queue.remove(seqs[1])


def test_the_scheduler_serves_a_small_tenant_ahead_of_a_big_backlog():
    scheduler = Scheduler(max_batch_size=2, max_num_batched_tokens=64, max_model_len=1024)
    for i in range(10):
        scheduler.add(seq(f"alpha{i}", "alpha", prompt=4))
    scheduler.schedule()  # alpha0 and alpha1 take both slots
    scheduler.add(seq("beta", "beta", prompt=4))
    scheduler.finish(scheduler.find("alpha0"), FinishReason.LENGTH)
    scheduler.finish(scheduler.find("alpha5"), FinishReason.ABORT)  # a waiting one aborted
    out = scheduler.schedule()
    assert [s.request_id for s, _ in out.prefills] == ["alpha1", "beta"]  # (alpha1 goes on with its prompt)
    assert len(scheduler.waiting) == 7
