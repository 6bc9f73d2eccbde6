"""Which KV-cache slot holds which tokens, so that a prompt's longest computed prefix is reused.

Bookkeeping only, no tensors. Every slot remembers the sequence that last held it (running, or
finished and kept until its room is needed) and how many of its tokens have keys and values in the
slot. A new sequence takes a free slot and starts from a copy of the best prefix held anywhere:
the runner copies those KV rows between slots before the step's forward (a token's keys and values
are ~37 KB for GPT-2 small in fp32, its forward ~250 MFLOP: copying is about a thousand times
cheaper than recomputing). The cache is the slot cache the engine has anyway: reuse costs no memory.

Lookup hashes the prompt in blocks of BLOCK tokens, each hash chained to the ones before it (the
hash of block i names the whole prefix up to it), so one dict lookup per block finds the slots
holding that prefix; the match is then checked token by token and extended into the next block.
Blocks of a running prefill are indexed at admission, with their keys still to come: a sequence
that would reuse more once that prefill is done waits for it instead of computing it a second time
(`n` > 1 choices, lm-eval's multiple-choice requests sent together).

Scores come from the cache too: position p's prompt score (logprob, rank, top alternatives,
entropy) depends only on tokens 0..p+1, so a sequence that asks for prompt logprobs reuses the
scores its source computed for the shared prefix, and computes itself only what the source did
not score (or scored with fewer alternatives).

Slots are chosen to keep the decode batch's slot range compact (decode attention reads that range
in place, holes included): among free slots that do not widen the range of running sequences, the
least recently used; otherwise the one that widens it least.
"""

from dataclasses import dataclass, field

from app.engine.protocol import PromptScores
from app.engine.sequence import Sequence, Status

BLOCK = 16  # tokens per hashed block
MAX_CANDIDATES = 8  # slots checked token by token per lookup


@dataclass(eq=False)
class Holding:
    """What one slot holds: keys and values of the first `length` tokens of `seq` (prompt, then
    output), and the index keys of its blocks."""

    seq: Sequence | None = None
    length: int = 0
    hashes: list[int] = field(default_factory=list)  # chained hashes of blocks 0, 1, ... (indexed)
    last_used: int = -1  # a tick; -1: never held anything

    @property
    def running(self) -> bool:
        return self.seq is not None and self.seq.status in (Status.PREFILL, Status.DECODE)


@dataclass(frozen=True)
class Reuse:
    """How a sequence starts: the first `length` tokens' keys and values (and, when it scores its
    prompt, their scores) from slot `source`, or from any of the free slots `alike` (which hold as
    much: taking one of them as its own slot saves the copy)."""

    source: int
    length: int
    alike: frozenset[int] = frozenset()


def chain_hashes(tokens: list[int], hashes: list[int], end: int) -> list[int]:
    """Extend `hashes` (of tokens' blocks 0..len-1) with the hashes of the full blocks that lie
    within tokens[:end]."""
    h = hashes[-1] if hashes else 0
    for start in range(len(hashes) * BLOCK, end - BLOCK + 1, BLOCK):
        h = hash((h, *tokens[start : start + BLOCK]))
        hashes.append(h)
    return hashes


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the common prefix of two token lists (whole blocks compared at C speed first)."""
    limit = min(len(a), len(b))
    n = 0
    while n + BLOCK <= limit and a[n : n + BLOCK] == b[n : n + BLOCK]:
        n += BLOCK
    while n < limit and a[n] == b[n]:
        n += 1
    return n


def tokens_of(seq: Sequence) -> list[int]:
    return seq.prompt_token_ids + seq.output_token_ids if seq.output_token_ids else seq.prompt_token_ids


class PrefixCache:
    def __init__(self, num_slots: int, enabled: bool = True):
        self.enabled = enabled
        self.slots = [Holding() for _ in range(num_slots)]
        self.free = set(range(num_slots))
        self.index: dict[int, set[int]] = {}  # block hash -> slots holding (or computing) that prefix
        self.tick = 0
        self.evictions = 0  # slots whose kept keys and values were dropped for a newcomer

    # --- lookup ------------------------------------------------------------------------------------
    def lookup(self, seq: Sequence) -> tuple[Reuse | None, int]:
        """The best prefix held now, and how long a prefix running prefills will hold once done
        (the best length available now if none will hold more)."""
        if not self.enabled:
            return None, 0
        prompt = seq.prompt_token_ids
        hashes = seq.block_hashes = seq.block_hashes or chain_hashes(prompt, [], len(prompt))
        deepest, computed = set(), set()
        for i, h in enumerate(hashes):
            slots = self.index.get(h)
            if not slots:
                break
            deepest = slots
            done = {s for s in slots if self.slots[s].length >= (i + 1) * BLOCK}
            if done:
                computed = done
        by_length: dict[int, list[int]] = {}
        later = 0
        for slot in list(deepest | computed)[:MAX_CANDIDATES]:
            held = self.slots[slot]
            lcp = common_prefix(prompt, tokens_of(held.seq))
            by_length.setdefault(reusable(seq, held.seq, lcp, held.length), []).append(slot)
            if held.seq.status is Status.PREFILL:
                later = max(later, reusable(seq, held.seq, lcp, held.seq.num_prompt_tokens))
        now = max(by_length, default=0)
        if not now:
            return None, later
        slots = by_length[now]
        return Reuse(slots[0], now, frozenset(s for s in slots if s in self.free)), max(later, now)

    # --- slots -------------------------------------------------------------------------------------
    def allocate(self, seq: Sequence, reuse: Reuse | None, compact: bool = True) -> tuple[int, Reuse | None]:
        """Give `seq` a free slot (there must be one) holding the reused prefix once the runner has
        copied it (if it is not in that slot already); returns the slot and where the prefix comes
        from. `compact`: choose so that the running sequences' slot range grows least (pointless
        when every free slot is about to be taken anyway)."""
        if not self.enabled:
            slot = min(self.free)
            self.free.discard(slot)
            self.slots[slot].seq = seq
            return slot, None
        slot = self._choose_slot(reuse.alike | {reuse.source} if reuse else frozenset(), compact)
        if reuse and slot in reuse.alike:
            reuse = Reuse(slot, reuse.length)
        if self.slots[slot].length and not (reuse and reuse.source == slot):
            self.evictions += 1
        self._unindex(slot)
        self.free.discard(slot)
        self.tick += 1
        if reuse:
            self.slots[reuse.source].last_used = self.tick  # read: recently used
        hashes = seq.block_hashes or chain_hashes(seq.prompt_token_ids, [], seq.num_prompt_tokens)
        self.slots[slot] = Holding(seq, reuse.length if reuse else 0, list(hashes), self.tick)
        for h in hashes:  # the prompt's blocks, computed or to come: see lookup()
            self._index(h, slot)
        return slot, reuse

    def computed(self, seq: Sequence) -> None:
        """`seq`'s keys and values now cover its first num_computed tokens."""
        self.slots[seq.slot].length = seq.num_computed

    def release(self, seq: Sequence, keep: bool = True) -> None:
        """`seq` gave up its slot; what it computed stays for later sequences unless `keep` is False
        (a failed step may have left its rows half written)."""
        held = self.slots[seq.slot]
        self.free.add(seq.slot)
        held.length = seq.num_computed if keep and self.enabled else 0
        self.tick += 1
        held.last_used = self.tick
        if not held.length:
            self._unindex(seq.slot)
            return
        # drop the prompt blocks it never computed, index the output blocks it did
        kept = held.length // BLOCK
        for h in held.hashes[kept:]:
            self._drop(h, seq.slot)
        del held.hashes[kept:]
        indexed = len(held.hashes)
        chain_hashes(tokens_of(seq), held.hashes, held.length)
        for h in held.hashes[indexed:]:
            self._index(h, seq.slot)

    def _choose_slot(self, preferred: frozenset[int], compact: bool) -> int:
        """Among free slots: the fewest positions added to the running sequences' slot range (when
        `compact`), then a preferred one (it holds the prefix to reuse), then the least recently used."""
        running = [i for i in range(len(self.slots)) if i not in self.free] if compact else []
        lo, hi = (min(running), max(running)) if running else (None, None)

        def key(slot: int) -> tuple[int, bool, int, int]:
            widen = 0 if lo is None else max(lo - slot, slot - hi, 0)
            return widen, slot not in preferred, self.slots[slot].last_used, slot

        return min(self.free, key=key)

    # --- the index ---------------------------------------------------------------------------------
    def _index(self, h: int, slot: int) -> None:
        self.index.setdefault(h, set()).add(slot)

    def _drop(self, h: int, slot: int) -> None:
        slots = self.index.get(h)
        if slots is not None:
            slots.discard(slot)
            if not slots:
                del self.index[h]

    def _unindex(self, slot: int) -> None:
        held = self.slots[slot]
        for h in held.hashes:
            self._drop(h, slot)
        held.hashes = []


def reusable(seq: Sequence, source: Sequence, lcp: int, held: int) -> int:
    """How many leading tokens `seq` may take from `source`, which shares its first `lcp` tokens
    and holds keys and values for its first `held`. At least the last prompt token is always
    computed (its logits give the first sampled token), and every position whose hidden states the
    request reads (explain, embeddings). A sequence that scores its prompt from token f on reuses
    past position f - 1 only where the source has those scores."""
    p = seq.params
    reads = p.reads_hidden_states_from  # explain and embeddings read hidden states: computed, never copied
    n = min(lcp, held, seq.num_prompt_tokens - 1, seq.num_prompt_tokens if reads is None else reads)
    if p.prompt_logprobs is None or n < p.prompt_logprobs_from:
        return max(n, 0)
    without_scores = p.prompt_logprobs_from - 1  # positions whose scores nobody asked for
    q = source.params
    if (q.prompt_logprobs is None or q.prompt_logprobs < p.prompt_logprobs or (p.prompt_stats and not q.prompt_stats)
            or q.prompt_logprobs_from > p.prompt_logprobs_from):
        return without_scores
    # target t is scored at position t - 1: the source has scores for targets up to min(held, its
    # prompt's last token), and target t is the same token only within the common prefix
    last_target = min(lcp - 1, held, source.num_prompt_tokens - 1)
    n = min(n, last_target)
    return n if n >= p.prompt_logprobs_from else without_scores


def reused_scores(seq: Sequence, source: Sequence, length: int) -> PromptScores | None:
    """The scores of `seq`'s prompt targets [f, length] taken from `source` (see reusable())."""
    p = seq.params
    if p.prompt_logprobs is None or length < p.prompt_logprobs_from:
        return None
    s = source.prompt_scores
    lo = p.prompt_logprobs_from - source.params.prompt_logprobs_from
    hi = length - source.params.prompt_logprobs_from + 1
    k = p.prompt_logprobs
    top = s.top[lo:hi] if k == source.params.prompt_logprobs else [t[:k] for t in s.top[lo:hi]]
    if p.prompt_stats:
        return PromptScores(s.token_logprobs[lo:hi], s.ranks[lo:hi], top, s.entropy[lo:hi],
                            s.logprob_variance[lo:hi])
    return PromptScores(s.token_logprobs[lo:hi], s.ranks[lo:hi], top)
