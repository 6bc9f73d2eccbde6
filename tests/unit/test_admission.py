"""Admission with several API processes on one engine (GPT2_API_SERVERS): together they never admit
more than the engine's capacity, and no request is accepted that no one process could ever admit."""

import asyncio

import pytest

from app.api.limits import Limits
from app.config import Settings
from app.engine.client import EngineClient, QueueFullError
from app.engine.protocol import EngineInfo
from app.engine.sequence import SamplingParams

INFO = EngineInfo(name="m", source="m", device="cpu", dtype="float32", load_format="dummy", max_model_len=64,
                  num_parameters=1, vocab_size=100, eos_token_id=None, max_batch_size=4, tokenizer_dir="",
                  memory_total=0.0, memory_used=0.0)


@pytest.mark.parametrize(("clients", "capacity"), [(1, 12), (2, 6), (5, 2), (64, 1)])
def test_each_api_process_admits_its_share_of_the_engines_capacity(clients, capacity):
    async def admitted() -> int:
        # nothing listens at the address: zmq connects lazily, and nothing here needs an answer
        client = EngineClient(INFO, "ipc:///nonexistent/gpt2-serve-test", max_queue=8, step_timeout=60,
                              clients=clients)
        try:
            params = SamplingParams(max_tokens=1)
            client.submit([(f"r{i}", [1, 2], params) for i in range(capacity)])
            with pytest.raises(QueueFullError):
                client.submit([("one-more", [1, 2], params)])
            return client.capacity
        finally:
            await client.shutdown()

    assert asyncio.run(admitted()) == capacity


def test_one_request_may_never_need_more_than_one_api_process_admits():
    assert Limits.from_settings(Settings(max_batch_size=32, max_queue=256)).max_sequences == 128  # half the queue
    two = Settings(max_batch_size=4, max_queue=8, max_request_share=1.0, api_servers=2)
    assert Limits.from_settings(two).max_sequences == 6  # (4 + 8) // 2, not the whole queue
