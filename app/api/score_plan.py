"""What a POST /v1/score request becomes, decided once, before anything is queued.

`validate` is every check of a score request that needs its tokens, the model or the request's
limits (the body's own form was checked when it was parsed: score_schemas.ScoreRequest), each a
400 naming the field as the client sent it. `plan` then lays out what the route does: each input's
engine sequences (its windows, app/scoring.py, with their parameters), the positions `explain`
reads, and how many entries the response will hold. (The engine checks each sequence again at its
door, app/engine/validation.py, for any client.)
"""

from dataclasses import dataclass

from app.api.errors import APIError
from app.api.limits import Limits, check_cost, check_texts, refuse
from app.api.score_schemas import Explain, ScoreRequest
from app.engine.protocol import EngineInfo, EngineRequest, SamplingParams
from app.scoring import Window, plan_windows, window_ends, window_params

Pair = tuple[list[int], list[int]]  # (context ids, input ids) of one input; [] when it has no context


@dataclass
class ScoredInput:
    """One input: its tokens (context first), the windows that score it and their parameters."""

    index: int
    context_ids: list[int]
    input_ids: list[int]
    windows: list[Window]
    params: SamplingParams  # every window's, but for the tokens each reports (window_params)

    @property
    def token_ids(self) -> list[int]:
        return self.context_ids + self.input_ids


@dataclass
class ScorePlan:
    inputs: list[ScoredInput]
    entries: int  # per-token entries of the response (it is built in a thread when there are many)

    def sequences(self, request_id: str) -> list[EngineRequest]:
        """Every window of every input, in order."""
        return [EngineRequest(f"{request_id}-{item.index}-{w}", item.token_ids[window.begin : window.end],
                              window_params(item.params, window))
                for item in self.inputs for w, window in enumerate(item.windows)]


def plan(body: ScoreRequest, pairs: list[Pair], info: EngineInfo, limits: Limits) -> ScorePlan:
    """The engine sequences that score the request's tokenized inputs, once `validate` passed them."""
    entries = validate(body, pairs, info, limits)
    inputs = []
    for i, (context_ids, input_ids) in enumerate(pairs):
        n = len(context_ids) + len(input_ids)
        explained = None if body.explain is None else explained_positions(body.explain, len(context_ids), n)
        windows = plan_windows(n, len(context_ids) or 1, info.max_model_len, body.stride)
        inputs.append(ScoredInput(i, context_ids, input_ids, windows, body.to_sampling_params(explained)))
    return ScorePlan(inputs, entries)


def check_before_tokenizing(body: ScoreRequest, info: EngineInfo, limits: Limits) -> None:
    """Raise the 400 of what is wrong before a token is made: how many texts and characters (inputs
    and contexts together), the stride."""
    check_texts([*body.inputs(), *(body.contexts() or [])], limits, "input")
    max_len = info.max_model_len
    if body.stride is not None and body.stride >= max_len:
        raise APIError(400, f"stride must be at most max_model_len - 1 = {max_len - 1}, got {body.stride}",
                       param="stride", code="invalid_value")
    if body.stride is not None and body.stride < limits.min_stride:
        raise refuse(f"stride {body.stride} would make a window every {body.stride} tokens; the smallest stride "
                     f"accepted is {limits.min_stride}", "stride", "min_stride")


def validate(body: ScoreRequest, pairs: list[Pair], info: EngineInfo, limits: Limits) -> int:
    """Raise the 400 of the first thing wrong with the tokenized request: an input (empty, a token
    outside the vocabulary, too long without a window); what it costs (engine sequences, tokens,
    response entries: counted without building anything); what it asks `explain` for (one window
    per input, positions that exist, within their limits). Returns the response's per-token entries."""
    max_len, vocab = info.max_model_len, info.vocab_size
    several = len(pairs) > 1
    windows = []  # of each input
    for i, (context_ids, input_ids) in enumerate(pairs):
        which = f" (input {i})" if several else ""
        if not input_ids:
            raise APIError(400, f"the input is empty{which}", param="input", code="invalid_value")
        for name, ids in (("context", context_ids), ("input", input_ids)):
            if max(ids, default=0) >= vocab:
                raise APIError(400, f"token id {max(ids)} is outside the vocabulary [0, {vocab}){which}", param=name,
                               code="invalid_value")
        n = len(context_ids) + len(input_ids)
        if n > max_len and body.window == "none":
            raise APIError(400, f"the input has {n} tokens{' (context included)' if context_ids else ''}{which}, "
                           f"more than this model's maximum context length of {max_len} tokens; send "
                           "\"window\": \"sliding\" to score it with a sliding window", param="input",
                           code="context_length_exceeded")
        try:
            windows.append(len(window_ends(n, len(context_ids) or 1, max_len, body.stride)))
        except ValueError as exc:  # only a max_model_len too small for any stride (below 2)
            raise APIError(400, str(exc), param="stride", code="invalid_value") from exc
    sequences = sum(windows)
    tokens = sum(len(c) + len(t) if w <= 1 else w * max_len for (c, t), w in zip(pairs, windows, strict=True))
    entries = sum(len(t) for _, t in pairs) * (1 + body.top_logprobs) if body.return_tokens else 0
    check_cost(sequences, tokens, entries, limits, "input")  # (tokens: an upper bound for several windows)
    if body.explain is None:
        return entries
    explained = 0  # positions, in all inputs
    for i, ((context_ids, input_ids), w) in enumerate(zip(pairs, windows, strict=True)):
        which, n = f" of input {i}" if several else "", len(context_ids) + len(input_ids)
        if w > 1:
            raise APIError(400, f"explain needs the whole input in one window, but the input{which} has {n} tokens, "
                           f"more than the model's context of {max_len}", param="explain", code="invalid_value")
        positions = explained_positions(body.explain, len(context_ids), n)
        if positions and positions[-1] >= n:
            raise APIError(400, f"explain.positions has {positions[-1]}, but the tokens{which} are numbered 0 to "
                           f"{n - 1} (context included)", param="explain.positions", code="invalid_value")
        explained += len(positions)
        entries += sum(entries_per_position(body.explain, p, info) for p in positions)
    if explained > limits.max_explain_positions:
        raise refuse(f"explain asks for {explained} positions; at most {limits.max_explain_positions} are allowed "
                     "in one request: name fewer in explain.positions, or send fewer or shorter inputs", "explain",
                     "max_explain_positions")
    if entries > limits.max_response_entries:
        raise refuse(f"with explain, the response would hold {entries} entries (positions x layers x (heads + 1) x "
                     f"attention_top_k, plus the lens); at most {limits.max_response_entries} are allowed: lower "
                     "attention_top_k or lens_top_k, or explain fewer positions", "explain", "max_response_entries")
    return entries


def explained_positions(explain: Explain, num_context: int, num_tokens: int) -> list[int]:
    """The positions of one input to explain, ascending and distinct (validate checks they exist)."""
    if explain.positions is None:  # from the one that predicts the first scored token to the last
        return list(range(max(num_context - 1, 0), num_tokens))
    return sorted(set(explain.positions))


def entries_per_position(explain: Explain, position: int, info: EngineInfo) -> int:
    """Values the response holds for one explained position (as check_cost counts entries)."""
    L, H = info.num_layers, info.num_heads
    attention = L * (H + 1) * min(explain.attention_top_k, position + 1)
    return attention + ((L + 1) * (explain.lens_top_k + 1) if explain.lens_top_k else 0)
