"""Prefix reuse as bookkeeping: what a new prompt may take from the slots, which slot it gets, when
it waits for a running prefill, and which scores come with the keys. No model (the engine with a
model, reuse on against off, is tests/unit/test_prefix_reuse.py)."""

import pytest

from app.engine.prefix_cache import BLOCK, PrefixCache, chain_hashes, common_prefix, reusable, reused_scores
from app.engine.protocol import FinishReason, PromptScores, SamplingParams
from app.engine.scheduler import LOOKAHEAD, Scheduler, StepResult
from app.engine.sequence import Sequence, Status

CONTEXT = list(range(1000, 1000 + 3 * BLOCK + 5))  # 53 tokens: three whole blocks and a bit


def seq(name: str, prompt: list[int], **params) -> Sequence:
    return Sequence(name, list(prompt), SamplingParams(**{"max_tokens": 8, **params}))


def scheduler(slots: int = 4, budget: int = 512, **kwargs) -> Scheduler:
    return Scheduler(max_batch_size=slots, max_num_batched_tokens=budget, max_model_len=1024, **kwargs)


def step(sched: Scheduler):
    """Schedule and pretend the model ran: token 7 for each sampled row; for chunks that asked,
    prompt scores whose logprob is -target (so that where each came from can be checked)."""
    out = sched.schedule()
    sampled = len(out.decodes) + sum(s.num_computed + n >= s.num_prompt_tokens and s.params.max_tokens > 0
                                     for s, n in out.prefills)
    result = StepResult(tokens=[7] * sampled)
    for i, (s, n) in enumerate(out.prefills):
        if s.params.prompt_logprobs is not None:
            first = max(s.num_computed, s.params.prompt_logprobs_from - 1)
            targets = s.prompt_token_ids[first + 1 : min(s.num_computed + n, s.num_prompt_tokens - 1) + 1]
            k = s.params.prompt_logprobs
            result.prompt_scores[i] = PromptScores([-t for t in targets], [1] * len(targets),
                                                   [[(t, 0.0)] * k for t in targets],
                                                   *(([0.5] * len(targets), [0.1] * len(targets))
                                                     if s.params.prompt_stats else ()))
    sched.update(out, result)
    return out


def test_chained_hashes_name_whole_prefixes_and_common_prefix_is_exact():
    a = chain_hashes(CONTEXT, [], len(CONTEXT))
    assert len(a) == 3
    b = chain_hashes([*CONTEXT[:BLOCK], 0, *CONTEXT[BLOCK + 1 :]], [], len(CONTEXT))
    assert a[0] == b[0] and a[1] != b[1] and a[2] != b[2]  # a change in block 1 changes every later hash
    assert chain_hashes(CONTEXT, a[:1], len(CONTEXT)) == a  # extending gives the same chain
    assert common_prefix(CONTEXT, [*CONTEXT[:40], 5]) == 40 and common_prefix(CONTEXT, CONTEXT[:10]) == 10


def test_a_prompt_reuses_the_longest_prefix_a_finished_sequence_left_and_computes_at_least_its_last_token():
    sched = scheduler()
    first = seq("first", CONTEXT + [1, 2, 3])
    sched.add(first)
    step(sched)
    sched.finish(first, FinishReason.ABORT)  # finished with its whole prompt computed: it stays held
    same = seq("same", CONTEXT + [1, 2, 3])
    longer = seq("longer", CONTEXT + [1, 2, 9, 9])
    for s in (same, longer):
        sched.add(s)
    out = sched.schedule()
    assert same.num_cached_tokens == len(CONTEXT) + 2  # all but the last token: its logits are needed
    assert longer.num_cached_tokens == len(CONTEXT) + 2  # the common prefix, token-exact past the blocks
    assert [(s.request_id, n) for s, n in out.prefills] == [("same", 1), ("longer", 2)]
    # one of them took the slot that held the prefix; the other got a copy of it
    assert len(out.copies) == 1 and out.copies[0][0] == first.slot and out.copies[0][2] == len(CONTEXT) + 2
    assert out.queried_tokens == 2 * len(CONTEXT) + 7 and out.hit_tokens == 2 * (len(CONTEXT) + 2)


def test_siblings_wait_for_a_running_prefill_of_their_prompt_then_copy_it():
    sched = scheduler(slots=8, budget=32)  # the prompt needs two steps of prefill
    prompt = CONTEXT + [1, 2, 3]
    forks = [seq(f"f{i}", prompt, seed=i) for i in range(4)]
    for s in forks:
        sched.add(s)
    out = step(sched)
    assert [s.request_id for s, _ in out.prefills] == ["f0"]  # the others would recompute it: they wait
    out = step(sched)
    assert [s.request_id for s, _ in out.prefills] == ["f0"] and not out.copies
    out = step(sched)  # f0's prompt is computed: each sibling copies all but its last token
    assert [(s.request_id, n) for s, n in out.prefills] == [("f1", 1), ("f2", 1), ("f3", 1)]
    assert sorted(dst for _, dst, _ in out.copies) == sorted(s.slot for s in forks[1:])
    assert {(src, n) for src, _, n in out.copies} == {(forks[0].slot, len(prompt) - 1)}


def test_a_prompt_sharing_no_whole_block_with_a_running_prefill_does_not_wait_for_it():
    sched = scheduler()
    sched.add(seq("a", CONTEXT + [1]))
    sched.add(seq("b", CONTEXT[: BLOCK - 1] + [0] * 30))
    sched.add(seq("c", CONTEXT[:BLOCK] + [0] * 30))  # shares a's first block: it waits
    out = step(sched)
    assert [s.request_id for s, _ in out.prefills] == ["a", "b"] and not out.copies
    out = step(sched)
    assert [(s.request_id, n) for s, n in out.prefills] == [("c", 30)] and out.copies[0][2] == BLOCK


def test_scores_come_from_the_cache_only_where_the_source_scored_enough():
    prompt = CONTEXT + [1, 2]
    scored = seq("scored", prompt, max_tokens=0, prompt_logprobs=2, prompt_stats=True)
    plain = seq("plain", prompt, max_tokens=0)
    lcp = len(prompt) - 1  # the last token differs
    # the source scored everything: all targets within the common prefix come back, the last computed
    assert reusable(seq("x", prompt[:-1] + [9], prompt_logprobs=1), scored, lcp, len(prompt)) == lcp - 1
    # fewer alternatives, no stats, a later first token: still covered
    assert reusable(seq("x", prompt, prompt_logprobs=0, prompt_logprobs_from=10), scored, lcp, 999) == lcp - 1
    # more alternatives than the source kept, or stats it did not compute: reuse stops before the scored part
    assert reusable(seq("x", prompt, prompt_logprobs=3), scored, lcp, 999) == 0
    assert reusable(seq("x", prompt, prompt_logprobs=0, prompt_logprobs_from=20), plain, lcp, 999) == 19
    assert reusable(seq("x", prompt, prompt_logprobs=1, prompt_stats=True), plain, lcp, 999) == 0
    # nothing scored: keys and values only, capped by what the source holds
    assert reusable(seq("x", prompt), plain, lcp, 30) == 30
    # a source that scores from a later token than asked cannot fill the gap
    late = seq("late", prompt, max_tokens=0, prompt_logprobs=2, prompt_logprobs_from=5)
    assert reusable(seq("x", prompt, prompt_logprobs=1, prompt_logprobs_from=3), late, lcp, 999) == 2


def test_reused_scores_are_the_sources_own_cut_to_what_was_asked():
    source = seq("s", CONTEXT, prompt_logprobs=3, prompt_stats=True, prompt_logprobs_from=2)
    n = len(CONTEXT) - 2  # targets 2..len-1
    source.prompt_scores = PromptScores(list(range(n)), [5] * n, [[(1, -1.0), (2, -2.0), (3, -3.0)]] * n,
                                        [0.5] * n, [0.25] * n)
    got = reused_scores(seq("x", CONTEXT, prompt_logprobs=1, prompt_logprobs_from=4), source, 20)
    assert got.token_logprobs == list(range(2, 19))  # targets 4..20
    assert got.top == [[(1, -1.0)]] * 17 and got.entropy == [] and got.logprob_variance == []
    with_stats = reused_scores(seq("x", CONTEXT, prompt_logprobs=3, prompt_stats=True, prompt_logprobs_from=2),
                               source, 10)
    assert len(with_stats.top[0]) == 3 and with_stats.entropy == [0.5] * 9


def test_echo_scores_of_a_shared_context_are_taken_not_recomputed():
    sched = scheduler()
    a = seq("a", CONTEXT + [1, 2, 3], max_tokens=0, prompt_logprobs=1)
    sched.add(a)
    step(sched)
    b = seq("b", CONTEXT + [4, 5, 6], max_tokens=0, prompt_logprobs=1)
    sched.add(b)
    out = step(sched)
    assert b.num_cached_tokens == len(CONTEXT) - 1  # the score of token len(CONTEXT) is computed again
    assert [n for _, n in out.prefills] == [4]
    assert b.status is Status.FINISHED and b.prompt_scores.token_logprobs == [-t for t in b.prompt_token_ids[1:]]


def test_output_tokens_are_reusable_once_their_sequence_finishes():
    sched = scheduler()
    turn = seq("turn", CONTEXT, max_tokens=3 * BLOCK)
    sched.add(turn)
    while turn.status is not Status.FINISHED:
        step(sched)
    assert turn.output_token_ids == [7] * (3 * BLOCK)
    nxt = seq("next", CONTEXT + [7] * (3 * BLOCK) + [42])  # the conversation goes on
    sched.add(nxt)
    sched.schedule()
    assert nxt.num_cached_tokens == len(CONTEXT) + 3 * BLOCK - 1  # the last output token's keys were never computed


def test_slots_keep_the_decode_range_compact_then_follow_lru():
    cache = PrefixCache(6)
    holders = [seq(f"s{i}", [i] * 20) for i in range(6)]
    for s in holders:
        s.slot, _ = cache.allocate(s, None)
    assert [s.slot for s in holders] == list(range(6))  # all empty: the lowest first
    for i in (4, 1, 3, 5):  # free in this order: 4 is the least recently used
        holders[i].num_computed = 20
        cache.release(holders[i])
    # running: 0 and 2. 1 lies inside their range; 3, 4 and 5 widen it by 1, 2, 3
    assert cache.allocate(seq("x", [9] * 20), None)[0] == 1 and cache.evictions == 1
    # now 0, 1, 2 run: 3 widens it least, even though 4 was freed earlier
    assert cache.allocate(seq("y", [9] * 20), None)[0] == 3
    cache.release(holders[0])
    holders[2].num_computed = 20
    cache.release(holders[2])
    # running: 1 and 3. 2 is inside; 0 and 4 would widen it by one: 2, the only slot inside
    assert cache.allocate(seq("z", [9] * 20), None)[0] == 2


def test_an_idle_cache_gives_a_new_prompt_the_least_recently_used_slot_and_keeps_the_rest():
    cache = PrefixCache(3)
    a, b = seq("a", CONTEXT), seq("b", [5] * 40)
    for s in (a, b):
        s.slot, _ = cache.allocate(s, None)
        s.num_computed = s.num_prompt_tokens
        cache.computed(s)
        cache.release(s)
    fresh = seq("c", [6] * 40)
    assert cache.allocate(fresh, None)[0] == 2  # the never-used slot; a's and b's prefixes stay
    again = seq("a2", CONTEXT)
    reuse, _ = cache.lookup(again)
    assert reuse.source == a.slot and reuse.length == len(CONTEXT) - 1


def hold(sched: Scheduler, prompts: list[list[int]]) -> None:
    """Run these prompts (one per slot, all at once), then finish them: each slot keeps one."""
    seqs = [seq(f"h{i}", p) for i, p in enumerate(prompts)]
    for s in seqs:
        s.slot, _ = sched.cache.allocate(s, None)
        s.num_computed = s.num_prompt_tokens
        sched.cache.computed(s)
    for s in seqs:
        sched.cache.release(s)


def test_when_every_free_slot_is_about_to_be_taken_newcomers_take_the_slots_holding_their_prefix():
    sched = scheduler(slots=6)
    hold(sched, [CONTEXT + [0], *([100 + i] * 20 for i in range(1, 5)), CONTEXT + [5]])  # the context: 0 and 5
    wave = [seq("a", CONTEXT + [7]), seq("b", CONTEXT + [8]), *(seq(f"d{i}", [200 + i] * 20) for i in range(4))]
    for s in wave:
        sched.add(s)
    out = sched.schedule()
    assert {wave[0].slot, wave[1].slot} == {0, 5} and not out.copies
    assert [s.num_cached_tokens for s in wave] == [len(CONTEXT)] * 2 + [0] * 4


def test_with_slots_to_spare_a_newcomer_copies_rather_than_widen_the_running_range():
    sched = scheduler(slots=6)
    hold(sched, [CONTEXT + [0], *([100 + i] * 20 for i in range(1, 5)), CONTEXT + [5]])
    a, b = seq("a", CONTEXT + [7]), seq("b", CONTEXT + [8])
    for s in (a, b):
        sched.add(s)
    out = sched.schedule()
    assert (a.slot, b.slot) == (0, 1) and [c[1:] for c in out.copies] == [(1, len(CONTEXT))]


def test_a_failed_sequence_leaves_nothing_to_reuse():
    sched = scheduler()
    a = seq("a", CONTEXT)
    sched.add(a)
    out = sched.schedule()
    sched.fail(out, "boom")
    b = seq("b", CONTEXT)
    sched.add(b)
    sched.schedule()
    assert a.finish_reason is FinishReason.ERROR and b.num_cached_tokens == 0


def test_with_reuse_off_nothing_is_looked_up_or_copied():
    sched = scheduler(prefix_caching=False)
    for name in "ab":
        sched.add(seq(name, CONTEXT))
    out = step(sched)
    assert [n for _, n in out.prefills] == [len(CONTEXT)] * 2 and not out.copies and out.hit_tokens == 0


def test_a_long_reuse_goes_first_but_the_head_of_the_queue_is_overtaken_a_bounded_number_of_times():
    sched = scheduler(slots=2, budget=1024)
    holder = seq("holder", CONTEXT + [1])
    sched.add(holder)
    step(sched)  # holder runs in one slot and keeps its prefix there; one slot is left
    head = seq("head", [3] * 30)
    sched.add(head)
    hits = [seq(f"hit{i}", CONTEXT + [i + 2]) for i in range(LOOKAHEAD + 2)]
    for s in hits:
        sched.add(s)
    admitted = []
    while head.status is Status.WAITING:
        out = sched.schedule()
        s = out.prefills[-1][0]  # the one admitted (holder decodes)
        admitted.append(s.request_id)
        sched.finish(s, FinishReason.ABORT)  # frees the slot for the next round
    assert admitted[:-1] == [f"hit{i}" for i in range(LOOKAHEAD)] and admitted[-1] == "head"
    assert head.overtaken == LOOKAHEAD


@pytest.mark.parametrize("caching", [True, False])
def test_abort_and_finish_free_the_slot_whatever_it_keeps(caching):
    sched = scheduler(slots=1, prefix_caching=caching)
    a = seq("a", CONTEXT)
    sched.add(a)
    step(sched)
    sched.finish(a, FinishReason.ABORT)
    assert sched.cache.free == {0} and sched.num_unfinished == 0
    b = seq("b", CONTEXT)
    sched.add(b)
    step(sched)
    assert b.slot == 0 and b.num_cached_tokens == (len(CONTEXT) - 1 if caching else 0)
