"""The scheduler alone: pure bookkeeping, no model, no tensors."""

import pytest

from app.engine.protocol import FinishReason, SamplingParams
from app.engine.scheduler import Scheduler, StepResult
from app.engine.sequence import Sequence, Status


def seq(name: str, prompt_len: int, max_tokens: int = 64) -> Sequence:
    return Sequence(name, list(range(1, prompt_len + 1)), SamplingParams(max_tokens=max_tokens))


def run_step(scheduler: Scheduler) -> list[tuple[str, int]]:
    """Schedule, then pretend the model ran and drew token 0 for every sampled row (as EngineCore
    does): prefills advance, finished prompts start decoding."""
    out = scheduler.schedule()
    scheduled = [(s.request_id, 1) for s in out.decodes] + [(s.request_id, n) for s, n in out.prefills]
    sampled = len(out.decodes) + sum(s.num_computed + n >= s.num_prompt_tokens for s, n in out.prefills)
    scheduler.update(out, StepResult(tokens=[0] * sampled))
    return scheduled


def test_admission_is_first_come_first_served_within_slots():
    sched = Scheduler(max_batch_size=2, max_num_batched_tokens=100, max_model_len=1024)
    for name in "abc":
        sched.add(seq(name, 5))
    assert run_step(sched) == [("a", 5), ("b", 5)]  # c waits: two slots
    assert [s.request_id for s in sched.waiting] == ["c"]
    assert {s.slot for s in sched.decoding} == {0, 1} and sched.num_running == 2
    assert run_step(sched) == [("a", 1), ("b", 1)]


def test_token_budget_chunks_long_prompts_and_decodes_come_first():
    sched = Scheduler(max_batch_size=4, max_num_batched_tokens=8, max_model_len=1024)
    sched.add(seq("short", 3))
    assert run_step(sched) == [("short", 3)]
    sched.add(seq("long", 20))
    # the decode takes 1 token, the long prompt gets the other 7 each step until done
    assert run_step(sched) == [("short", 1), ("long", 7)]
    assert run_step(sched) == [("short", 1), ("long", 7)]
    assert run_step(sched) == [("short", 1), ("long", 6)]
    assert run_step(sched) == [("short", 1), ("long", 1)]


def test_partial_prefills_keep_priority_over_newcomers():
    sched = Scheduler(max_batch_size=4, max_num_batched_tokens=10, max_model_len=1024)
    sched.add(seq("first", 15))
    sched.add(seq("second", 4))
    assert run_step(sched) == [("first", 10)]
    assert run_step(sched) == [("first", 5), ("second", 4)]


def test_finish_and_abort_free_slots_for_waiting_sequences():
    sched = Scheduler(max_batch_size=1, max_num_batched_tokens=16, max_model_len=1024)
    a, b = seq("a", 2), seq("b", 2)
    sched.add(a)
    sched.add(b)
    run_step(sched)
    assert a.status is Status.DECODE and b.status is Status.WAITING
    sched.finish(sched.find("a"), FinishReason.ABORT)
    assert a.status is Status.FINISHED and a.finish_reason is FinishReason.ABORT
    assert run_step(sched) == [("b", 2)] and b.slot == 0
    sched.finish(b, FinishReason.LENGTH)
    sched.finish(b, FinishReason.LENGTH)  # twice is harmless
    assert sched.num_unfinished == 0 and sched.schedule().is_empty


def test_aborting_a_waiting_sequence_removes_it_from_the_queue():
    sched = Scheduler(max_batch_size=1, max_num_batched_tokens=16, max_model_len=1024)
    sched.add(seq("a", 2))
    sched.add(seq("b", 2))
    sched.finish(sched.find("b"), FinishReason.ABORT)
    assert [s.request_id for s in sched.waiting] == ["a"] and sched.find("b") is None


def test_a_duplicate_request_id_is_refused():
    sched = Scheduler(max_batch_size=1, max_num_batched_tokens=16, max_model_len=1024)
    sched.add(seq("a", 1))
    with pytest.raises(ValueError, match="already"):
        sched.add(seq("a", 1))


def test_the_decode_list_and_its_version_change_only_when_sequences_join_or_leave():
    sched = Scheduler(max_batch_size=4, max_num_batched_tokens=30, max_model_len=1024)
    for name in "ab":
        sched.add(seq(name, 2))
    run_step(sched)
    first = sched.schedule()
    assert [s.request_id for s in first.decodes] == ["a", "b"]
    run_step(sched)
    again = sched.schedule()
    assert again.decode_version == first.decode_version and again.decodes is first.decodes
    sched.finish(sched.find("a"), FinishReason.STOP)
    after = sched.schedule()
    assert after.decode_version != first.decode_version and [s.request_id for s in after.decodes] == ["b"]
    assert [s.request_id for s in first.decodes] == ["a", "b"]  # a list handed out never changes under its reader


def test_without_prefix_caching_the_lowest_free_slot_is_reused_first():
    sched = Scheduler(max_batch_size=3, max_num_batched_tokens=30, max_model_len=1024, prefix_caching=False)
    seqs = [seq(n, 2) for n in "abc"]
    for s in seqs:
        sched.add(s)
    run_step(sched)
    sched.finish(seqs[0], FinishReason.LENGTH)
    sched.finish(seqs[1], FinishReason.LENGTH)
    sched.add(seq("d", 2))
    run_step(sched)
    assert sched.find("d").slot == 0
    assert sched.kv_cache_usage == pytest.approx(2 / 3)


def test_phase_labels():
    sched = Scheduler(max_batch_size=2, max_num_batched_tokens=16, max_model_len=1024)
    sched.add(seq("a", 2))
    assert sched.schedule().phase == "prefill"
    run_step(sched)
    assert sched.schedule().phase == "decode"
    sched.add(seq("b", 2))
    assert sched.schedule().phase == "mixed"


def test_budget_smaller_than_batch_is_refused():
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        Scheduler(max_batch_size=8, max_num_batched_tokens=4, max_model_len=1024)


def test_the_logit_lens_counts_in_the_step_budget():
    """Each position explained through the logit lens costs lens_cost tokens of the step's budget,
    so a long explained prompt is prefilled in smaller chunks (and decodes keep their pace); a
    chunk holds one token at least, and positions not explained cost what they always did."""
    from app.engine.protocol import ExplainParams

    def explained(name: str, positions: list[int], lens: int = 2) -> Sequence:
        params = SamplingParams(max_tokens=1, explain=ExplainParams(positions, attention_top_k=1, lens_top_k=lens))
        return Sequence(name, list(range(1, 41)), params)

    sched = Scheduler(max_batch_size=2, max_num_batched_tokens=10, max_model_len=1024, lens_cost=3.0)
    sched.add(explained("all", list(range(40))))  # every position: 1 + 3 = 4 tokens' worth each
    assert [n for _, n in sched.schedule().prefills] == [2]  # 2 x 4 = 8 fits in 10, 3 x 4 = 12 does not
    sched = Scheduler(max_batch_size=2, max_num_batched_tokens=10, max_model_len=1024, lens_cost=3.0)
    sched.add(explained("late", [30, 31]))  # the first chunk explains nothing: a full one
    assert run_step(sched) == [("late", 10)]
    assert run_step(sched) == [("late", 10)]
    assert run_step(sched) == [("late", 10)]  # 20..29: still nothing explained
    assert run_step(sched) == [("late", 4)]  # 30..33: 4 + 2 x 3 = 10; 30..34 would be 11
    assert run_step(sched) == [("late", 6)]  # the rest
    sched = Scheduler(max_batch_size=2, max_num_batched_tokens=3, max_model_len=1024, lens_cost=3.0)
    sched.add(explained("tight", [0]))
    assert [n for _, n in sched.schedule().prefills] == [1]  # 4 > 3, but one token always goes
    sched = Scheduler(max_batch_size=2, max_num_batched_tokens=10, max_model_len=1024, lens_cost=3.0)
    sched.add(explained("attention only", list(range(40)), lens=0))
    assert [n for _, n in sched.schedule().prefills] == [10]
