"""Can the engine ever run this sequence? One pure function, run once per sequence at the front
door (EngineClient.submit), against the limits the engine reported when it became ready."""

from app.engine.protocol import POOLINGS, EngineInfo, SamplingParams


class InvalidRequestError(ValueError):
    """A sequence the engine can never serve; says why, which request field is at fault, and a
    stable machine-readable code."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value"):
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


def validate_sequence(prompt_token_ids: list[int], params: SamplingParams, info: EngineInfo) -> None:
    """Raise InvalidRequestError unless the engine can run this prompt with these parameters."""
    n, vocab = len(prompt_token_ids), info.vocab_size
    if n == 0:
        raise InvalidRequestError("the prompt is empty", "prompt")
    if min(prompt_token_ids) < 0 or max(prompt_token_ids) >= vocab:
        bad = next(t for t in prompt_token_ids if not 0 <= t < vocab)
        raise InvalidRequestError(f"prompt token id {bad} is outside the vocabulary [0, {vocab})", "prompt")
    if n + params.max_tokens > info.max_model_len:
        raise InvalidRequestError(
            f"the prompt has {n} tokens and max_tokens is {params.max_tokens}: together {n + params.max_tokens}, "
            f"more than this model's maximum context length of {info.max_model_len} tokens", "max_tokens",
            "context_length_exceeded")
    if params.prompt_logprobs is not None and not 1 <= params.prompt_logprobs_from <= max(n - 1, 1):
        raise InvalidRequestError(f"prompt_logprobs_from must lie in [1, {max(n - 1, 1)}]", "prompt")
    for name, ids in (("logit_bias", params.logit_bias), ("stop_token_ids", params.stop_token_ids)):
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise InvalidRequestError(f"token id {bad} is outside the vocabulary [0, {vocab})", name)
    validate_readout(n, params, info)


def validate_readout(n: int, params: SamplingParams, info: EngineInfo) -> None:
    """explain and embed (protocol.py): positions of this prompt, layers of this model."""
    explain, embed = params.explain, params.embed
    if explain is not None:
        positions = explain.positions
        if positions and (positions[0] < 0 or positions[-1] >= n or positions != sorted(set(positions))):
            raise InvalidRequestError(f"explain positions must be ascending, distinct and in [0, {n})", "explain")
        if explain.attention_top_k < 0 or explain.lens_top_k < 0:
            raise InvalidRequestError("explain's top k must not be negative", "explain")
    if embed is not None:
        if not embed.layers or any(not 0 <= layer <= info.num_layers for layer in embed.layers):
            raise InvalidRequestError(f"embedding layers must lie in [0, {info.num_layers}]", "layer")
        if not embed.pooling or any(p not in POOLINGS for p in embed.pooling):
            raise InvalidRequestError(f"pooling must be one of {', '.join(POOLINGS)}", "pooling")
        if embed.standardize and info.embedding_reference is None:
            raise InvalidRequestError("standardize needs GPT2_EMBEDDING_REFERENCE's statistics", "standardize")
