"""Admission (app/engine/admission.py): the engine's capacity holds over every API process, a caller
under its fair share gets in even when another filled the queue, and counts are released."""

import asyncio

import numpy as np
import pytest

from app.api.limits import Limits
from app.config import Settings
from app.engine.admission import RESERVE_SHARE, Admission, QueueFullError, ShareTable, Tenant
from app.engine.client import EngineClient
from app.engine.protocol import EngineInfo, EngineRequest, SamplingParams

INFO = EngineInfo(name="m", source="m", device="cpu", dtype="float32", load_format="dummy", max_model_len=64,
                  num_parameters=1, vocab_size=100, eos_token_id=None, max_batch_size=4, tokenizer_dir="",
                  memory_total=0.0, memory_used=0.0)
ALPHA, BETA, GAMMA = (Tenant(f"key:{i}", "default", i) for i in range(3))


def admission(capacity: int = 100, fair: bool = True, weights=(1.0, 1.0, 1.0), table: ShareTable | None = None,
              row: int = 0) -> Admission:
    return Admission(table or ShareTable(1, 3), row, capacity, np.array(weights), fair)


def fill(a: Admission, tenant: Tenant, size: int = 1) -> int:
    """Admit requests of `size` sequences until refused; how many sequences got in."""
    admitted = 0
    while True:
        try:
            a.admit(tenant, size)
        except QueueFullError:
            return admitted
        admitted += size


def test_one_caller_may_fill_the_whole_capacity_but_no_more():
    a = admission()
    assert fill(a, ALPHA, 10) == 100
    with pytest.raises(QueueFullError, match="exceed 100"):
        a.admit(ALPHA, 1)


def test_another_caller_gets_in_when_one_filled_the_queue_up_to_its_share_and_the_reserve():
    a = admission()
    fill(a, ALPHA)
    a.admit(BETA, 1)  # under its share (half of 100): admitted past the capacity, from the reserve
    with pytest.raises(QueueFullError):
        a.admit(ALPHA, 1)  # over its share: nothing from the reserve
    beta = 1 + fill(a, BETA)
    assert beta == int(100 * RESERVE_SHARE)  # the reserve bounds the total: 125 at most
    assert a.table.total(0) == 100 + int(100 * RESERVE_SHARE)
    with pytest.raises(QueueFullError, match="reserve"):
        a.admit(GAMMA, 1)


def test_without_fair_sharing_a_full_queue_refuses_everyone():
    a = admission(fair=False)
    fill(a, ALPHA)
    with pytest.raises(QueueFullError):
        a.admit(BETA, 1)


def test_shares_follow_the_weights_of_the_callers_holding_sequences():
    a = admission(weights=(1.0, 3.0, 1.0))
    assert a.share(ALPHA) == 100  # alone: everything
    a.admit(ALPHA, 1)
    assert a.share(Tenant("key:1", "batch", 1, 3.0)) == 75
    a.admit(Tenant("key:1", "batch", 1, 3.0), 1)
    assert a.share(GAMMA) == pytest.approx(100 / 5)


def test_below_capacity_anyone_gets_in_and_past_it_only_a_caller_under_its_share():
    a = admission(capacity=10)
    fill(a, ALPHA)  # 10
    assert fill(a, BETA) == 2  # under half of 10: the reserve (a quarter of 10)
    a.release(ALPHA.slot, 8)  # ALPHA now holds 2, BETA 2: room for 6
    assert fill(a, BETA) == 6  # below capacity nobody's share is asked; past it BETA holds 8 > 5
    a.admit(ALPHA, 1)  # ALPHA holds 2 < 5: the reserve is open to it
    assert a.table.total(0) == 11


def test_counts_are_shared_by_every_api_process_and_a_dead_ones_row_can_be_cleared(tmp_path):
    path = str(tmp_path / "shares")
    ShareTable.create(path, rows=2, slots=3)
    first, second = admission(capacity=10, table=ShareTable(2, 3, path)), admission(capacity=10, table=ShareTable(
        2, 3, path), row=1)
    assert fill(first, ALPHA, 4) == 8
    assert fill(second, ALPHA) == 2  # the engine's capacity, not each process's
    assert second.table.held(0, ALPHA.slot) == 10
    ShareTable(2, 3, path).clear_row(0)  # the supervisor, when the first process died
    assert fill(second, ALPHA) == 8


def test_one_request_may_take_its_share_of_the_queue_whatever_the_number_of_api_processes():
    assert Limits.from_settings(Settings(max_batch_size=32, max_queue=256)).max_sequences == 128  # half the queue
    two = Settings(max_batch_size=4, max_queue=8, max_request_share=1.0, api_servers=2)
    assert Limits.from_settings(two).max_sequences == 8  # admission counts over both processes


def test_the_engine_client_counts_what_it_submits_and_releases_what_ends():
    async def run() -> None:
        a = admission(capacity=6)
        # nothing listens at the address: zmq connects lazily, and nothing here needs an answer
        client = EngineClient(INFO, "ipc:///nonexistent/gpt2-serve-test", max_queue=8, step_timeout=60, admission=a)
        try:
            params = SamplingParams(max_tokens=1)
            streams = client.submit([EngineRequest(f"r{i}", [1, 2], params) for i in range(6)], ALPHA)
            with pytest.raises(QueueFullError):
                client.submit([EngineRequest("one-more", [1, 2], params)], ALPHA)
            client.submit([EngineRequest("beta", [1, 2], params)], BETA)  # under its share
            assert (a.table.held(0, ALPHA.slot), a.table.held(0, BETA.slot)) == (6, 1)
            client.close(streams[:4])
            assert a.table.held(0, ALPHA.slot) == 2
        finally:
            await client.shutdown()  # fails what is left: every count is released
        assert a.table.total(0) == 0

    asyncio.run(run())
