"""The bodies of POST /v1/score, both ways (see docs/scoring.md).

The request is pydantic, validated once when the body is parsed; `to_sampling_params()` converts it
to the engine's dataclass. The response is TypedDicts: calling one builds the plain dict that is sent
(fast, and serialised off the event loop when big), and the same definitions give /openapi.json its
schema (tests/integration/test_score.py checks real responses against it).
"""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from typing_extensions import NotRequired, TypedDict  # pydantic needs typing_extensions' before Python 3.12

from app.api.schemas import Text, Texts, TokenIds, form, one_of
from app.engine.protocol import ExplainParams, SamplingParams

MAX_TOP_LOGPROBS = 20
MAX_ATTENTION_TOP_K = 1024  # GPT-2's longest context: a row is never longer
MAX_LENS_TOP_K = 20
NO_JUDGE = "no judge loaded; train one with gpt2-serve train-detector and set GPT2_DETECTOR"

# may be empty: then <|endoftext|> is the context; fail_fast: validation stops at the first bad id
ContextIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(fail_fast=True)]
ScoreInput = one_of(Text, Texts, TokenIds, Annotated[list[TokenIds], Field(min_length=1, fail_fast=True)])
ScoreContext = one_of(Text, Texts, ContextIds, Annotated[list[ContextIds], Field(min_length=1, fail_fast=True)])


def _kind(value: object) -> str:
    """What form a field took: text, texts, ids or id_lists."""
    return form(value).strip("[]")


class Explain(BaseModel):
    """What to explain. Unknown fields are refused (a misspelt option would otherwise be ignored)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"positions": [3, 4], "attention_top_k": 5, "lens_top_k": 3}]})

    positions: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, examples=[[3, 4]], description="Positions to explain, counted from the first token (of the context, "
        "when there is one). Position p is the model's state at token p: it attends to tokens 0..p and predicts "
        "token p + 1. Default: every position from the one that predicts the first scored token to the last.")
    attention_top_k: int = Field(5, ge=0, le=MAX_ATTENTION_TOP_K, description="Per layer, for each head and for the "
                                 "heads' average, the positions attended to most, with their weights (a row with "
                                 "fewer positions comes whole). 0: no attention.", examples=[5])
    lens_top_k: int = Field(5, ge=0, le=MAX_LENS_TOP_K, description="Per layer, the likeliest next tokens read "
                            "from the residual stream through the final layer norm and the unembedding (the logit "
                            "lens), with their probabilities. 0: no logit lens.", examples=[3])

    @model_validator(mode="after")
    def _asks_something(self) -> "Explain":
        if not (self.attention_top_k or self.lens_top_k):
            raise ValueError("asks for nothing: set attention_top_k or lens_top_k above 0")
        return self


class ScoreRequest(BaseModel):
    """POST /v1/score. Unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [
        {"input": ["The cat sat on the mat.", "Colourless green ideas sleep furiously."]},
        {"context": "The capital of France is", "input": " Paris", "detect": False}]})

    model: str | None = Field(None, description="The served model's name (see GET /v1/models); omit for the default.",
                              examples=["gpt2"])
    input: ScoreInput = Field(..., description="What to score: a string, a list of strings, a list of token ids, or "
                              "a list of token-id lists. Without `context` every token after the first is scored.",
                              examples=["The quick brown fox jumps over the lazy dog."])
    context: ScoreContext | None = Field(None, description="Optional context of the same form and length as `input`: "
                                         "then only the input (the continuation) is scored, given the context, as "
                                         "lm-evaluation-harness's loglikelihood. An empty context means "
                                         "<|endoftext|>.", examples=["The capital of France is"])
    top_logprobs: int = Field(0, ge=0, le=MAX_TOP_LOGPROBS, description="Also list this many most likely tokens at "
                              "each scored position (0-20).", examples=[5])
    detect: bool = Field(True, description="Add the detection statistics (GLTR buckets, mean log-rank, mean "
                         "entropy, Fast-DetectGPT).", examples=[True])
    return_tokens: bool = Field(True, description="Return the per-token arrays (tokens, ids, logprobs, ranks, top "
                                "alternatives); false returns the per-input numbers only.", examples=[True])
    window: Literal["none", "sliding"] = Field("none", description="`none`: an input longer than the model's "
                                               "context is refused (400); `sliding`: it is scored with a sliding "
                                               "window, each token once.", examples=["sliding"])
    timeout: float | None = Field(None, gt=0, description="Seconds this request may take (at most the server's "
                                  "GPT2_REQUEST_TIMEOUT); then it is stopped with a 504 `timeout`.", examples=[30])
    stride: int | None = Field(None, ge=1, description="Sliding window step in tokens, at most max_model_len - 1; "
                               "every token past the first window gets at least max_model_len - stride tokens of "
                               "context. Default max_model_len // 2.", examples=[512])
    explain: Explain | None = Field(None, description="Also explain how the model read each input: per layer, the "
                                    "positions each position attended to and the logit lens (see docs/scoring.md; it "
                                    "costs more than scoring). The input must fit the model's context.",
                                    examples=[{"attention_top_k": 5, "lens_top_k": 3}])

    @field_validator("context")
    @classmethod
    def _check_context(cls, context: object, info: ValidationInfo) -> object:
        if context is None or "input" not in info.data:
            return context
        inp = info.data["input"]
        given, wanted = _kind(context), _kind(inp)
        if given == "ids" and not context and wanted == "id_lists":
            given = "id_lists"  # [] is no context for a list of inputs, not an empty one
        if given != wanted:
            raise ValueError(f"must have the same form as input (input is {wanted.replace('_', ' ')}, "
                             f"context is {given.replace('_', ' ')})")
        if given in ("texts", "id_lists") and len(context) != len(inp):
            raise ValueError(f"must have one entry per input: {len(context)} contexts for {len(inp)} inputs")
        return context

    def inputs(self) -> list[str | list[int]]:
        """The inputs, one entry each (text or token ids)."""
        return [self.input] if _kind(self.input) in ("text", "ids") else list(self.input)

    def contexts(self) -> list[str | list[int]] | None:
        """The contexts, aligned with inputs(), or None."""
        if self.context is None:
            return None
        return [self.context] if _kind(self.context) in ("text", "ids") else list(self.context)

    def to_sampling_params(self, explained: list[int] | None = None) -> SamplingParams:
        """Prefill-only: score the prompt, generate nothing; with `explain`, read these positions too."""
        explain = None if explained is None else ExplainParams(explained, self.explain.attention_top_k,
                                                               self.explain.lens_top_k)
        return SamplingParams(max_tokens=0, temperature=0.0, prompt_logprobs=self.top_logprobs,
                              prompt_stats=self.detect, explain=explain)


# --- the response ----------------------------------------------------------------------------------
class TopLogprob(TypedDict):
    token: Annotated[str, Field(description="The token's text (`bytes:\\xNN` for part of a UTF-8 character).",
                                examples=[" the"])]
    token_id: Annotated[int, Field(description="The token's id.", examples=[262])]
    logprob: Annotated[float, Field(description="Its logprob (natural log) at this position.", examples=[-1.25])]


class GLTRBuckets(TypedDict):
    top_10: Annotated[float, Field(description="Fraction of scored tokens ranked 1-10.", examples=[0.62])]
    top_100: Annotated[float, Field(description="Fraction ranked 11-100.", examples=[0.2])]
    top_1000: Annotated[float, Field(description="Fraction ranked 101-1000.", examples=[0.12])]
    rest: Annotated[float, Field(description="Fraction ranked beyond 1000.", examples=[0.06])]


class JudgeFeature(TypedDict):
    name: Annotated[str, Field(description="The feature's name (docs/scoring.md lists them).",
                               examples=["mean_log_rank"])]
    value: Annotated[float, Field(description="Its value for this input.", examples=[1.2])]
    contribution: Annotated[float, Field(description="Its share of the judge's decision (log-odds units, relative "
                                         "to an average training text): positive pushes towards machine.",
                                         examples=[2.3])]


class JudgeVerdict(TypedDict):
    """Built by app/detect/judge.py's Judge.verdict."""

    machine_probability: Annotated[float, Field(ge=0.0, le=1.0, description="The trained judge's calibrated "
                                                "probability (0-1) that a machine wrote the input, at even prior "
                                                "odds.", examples=[0.93])]
    verdict: Annotated[Literal["machine", "human"], Field(description="`machine` when machine_probability >= "
                                                          "threshold, else `human`.", examples=["machine"])]
    threshold: Annotated[float, Field(description="The judge's operating threshold (set when it was trained).",
                                      examples=[0.5])]
    top_features: Annotated[list[JudgeFeature], Field(description="The features that weighed most in this "
                                                      "verdict, largest |contribution| first.", examples=[[
                                                          {"name": "mean_log_rank", "value": 1.2,
                                                           "contribution": 2.3}]])]


class DetectorInfo(TypedDict):
    """Whether a trained judge answers in `detection.judge`. Only the fields of its state are present."""

    __pydantic_config__ = ConfigDict(json_schema_extra={"examples": [
        {"loaded": False, "message": NO_JUDGE}, {"loaded": True, "name": "demo-judge", "threshold": 0.5}]})

    loaded: Annotated[bool, Field(description="A judge is loaded (GPT2_DETECTOR).", examples=[True])]
    message: NotRequired[Annotated[str, Field(description="Present when no judge is loaded: how to get one.",
                                              examples=[NO_JUDGE])]]
    name: NotRequired[Annotated[str, Field(description="Present when loaded: the judge's name.",
                                           examples=["demo-judge"])]]
    threshold: NotRequired[Annotated[float, Field(description="Present when loaded: its operating threshold on "
                                                  "machine_probability.", examples=[0.5])]]


class Detection(TypedDict):
    gltr: Annotated[GLTRBuckets, Field(description="GLTR's rank buckets (Gehrmann et al., 2019).", examples=[
        {"top_10": 0.62, "top_100": 0.2, "top_1000": 0.12, "rest": 0.06}])]
    mean_log_rank: Annotated[float, Field(description="Mean natural log of the 1-based rank; lower looks more "
                                          "machine-like.", examples=[1.9])]
    mean_entropy: Annotated[float | None, Field(description="Mean entropy (nats) of the model's predictive "
                                                "distribution at the scored positions.", examples=[3.4])]
    fast_detect_gpt: Annotated[float | None, Field(description="Fast-DetectGPT's analytic criterion with this "
                                                   "model as sampling and scoring model: about N(0, 1) on the "
                                                   "model's own samples, higher = more machine-like; null if the "
                                                   "model's variance is 0.", examples=[1.7])]
    judge: Annotated[JudgeVerdict | None, Field(description="The trained judge's verdict (GPT2_DETECTOR); null when "
                                                "no judge is loaded.", examples=[{
                                                    "machine_probability": 0.93, "verdict": "machine",
                                                    "threshold": 0.5, "top_features": [
                                                        {"name": "mean_log_rank", "value": 1.2,
                                                         "contribution": 2.3}]}])]


class LensToken(TypedDict):
    token: Annotated[str, Field(description="The token's text.", examples=[" the"])]
    token_id: Annotated[int, Field(description="Its id.", examples=[262])]
    prob: Annotated[float, Field(description="Its probability at this layer.", examples=[0.31])]


class LensLayer(TypedDict):
    top: Annotated[list[LensToken], Field(description="The lens_top_k likeliest next tokens at this layer, most "
                                          "likely first.", examples=[[{"token": " the", "token_id": 262,
                                                                       "prob": 0.31}]])]
    next_token_prob: Annotated[float | None, Field(description="The probability of the text's own next token (the "
                                                   "one at position + 1) at this layer; null at the last position.",
                                                   examples=[0.02])]


class AttentionLayer(TypedDict):
    heads: Annotated[list[list[tuple[int, float]]], Field(description="For each head, [position, weight] pairs: the "
                                                          "positions it attended to most, largest weight first.",
                                                          examples=[[[[2, 0.71], [0, 0.2]], [[0, 0.93], [2, 0.04]]]])]
    mean: Annotated[list[tuple[int, float]], Field(description="The same for the heads' average weights.",
                                                   examples=[[[0, 0.565], [2, 0.375]]])]


class PositionExplanation(TypedDict):
    position: Annotated[int, Field(description="The position explained (0 is the first token, of the context when "
                                   "there is one).", examples=[3])]
    token: Annotated[str, Field(description="The token at that position.", examples=[" sat"])]
    attention: Annotated[list[AttentionLayer] | None, Field(description="One entry per layer (block 1 first); null "
                                                            "when attention_top_k is 0.", examples=[[{
                                                                "heads": [[[2, 0.71], [0, 0.2]]],
                                                                "mean": [[2, 0.71]]}]])]
    lens: Annotated[list[LensLayer] | None, Field(description="One entry per layer: 0 is the embeddings, l the "
                                                  "residual stream after block l, the last one the model's own "
                                                  "prediction; null when lens_top_k is 0.", examples=[[{
                                                      "top": [{"token": " the", "token_id": 262, "prob": 0.31}],
                                                      "next_token_prob": 0.02}]])]
    first_top1_layer: Annotated[int | None, Field(description="The first layer at which the model's final "
                                                  "prediction (its top token at the last layer) is already the top "
                                                  "token; null without the lens.", examples=[2])]
    settled_layer: Annotated[int | None, Field(description="The layer from which on the top token stays the final "
                                               "prediction; null without the lens.", examples=[3])]


class Explanation(TypedDict):
    num_layers: Annotated[int, Field(description="Transformer blocks (L): `attention` has L entries, `lens` L + 1.",
                                     examples=[12])]
    num_heads: Annotated[int, Field(description="Attention heads per block.", examples=[12])]
    positions: Annotated[list[PositionExplanation], Field(description="The explained positions, in order.",
                                                          examples=[[{"position": 3, "token": " sat",
                                                                      "attention": None, "lens": None,
                                                                      "first_top1_layer": None,
                                                                      "settled_layer": None}]])]


class ScoreResult(TypedDict):
    index: Annotated[int, Field(description="Position of the input in the request.", examples=[0])]
    tokens: Annotated[list[str] | None, Field(description="The input's tokens (without the context); null unless "
                                              "return_tokens.", examples=[["The", " cat"]])]
    token_ids: Annotated[list[int] | None, Field(description="Their ids.", examples=[[464, 3797]])]
    token_logprobs: Annotated[list[float | None] | None, Field(description="Each token's logprob; the first is null "
                                                               "when there is no context.", examples=[[None, -7.1]])]
    ranks: Annotated[list[int | None] | None, Field(description="Each token's 1-based rank under the model (1 + the "
                                                    "number of tokens strictly more likely: ties count in its "
                                                    "favour); null where the logprob is.", examples=[[None, 412]])]
    top_logprobs: Annotated[list[list[TopLogprob] | None] | None, Field(
        description="The top_logprobs most likely tokens at each position, most likely first; the first is null when "
        "there is no context. null unless top_logprobs > 0 and return_tokens.",
        examples=[[None, [{"token": " cat", "token_id": 3797, "logprob": -5.2}]]])]
    entropies: Annotated[list[float | None] | None, Field(description="Entropy (nats) of the model's predictive "
                                                          "distribution at each token's position; the first is null "
                                                          "when there is no context. null unless detect and "
                                                          "return_tokens.", examples=[[None, 4.7]])]
    logprob_variances: Annotated[list[float | None] | None, Field(
        description="Variance of log p under the model's distribution at each token's position (Fast-DetectGPT's "
        "sigma squared); the first is null when there is no context. null unless detect and return_tokens.",
        examples=[[None, 6.1]])]
    num_context_tokens: Annotated[int, Field(description="Tokens of the context (0 without one).", examples=[0])]
    num_tokens: Annotated[int, Field(description="Tokens scored.", examples=[9])]
    sum_logprob: Annotated[float, Field(description="Sum of the scored tokens' logprobs (the loglikelihood).",
                                        examples=[-52.3])]
    mean_logprob: Annotated[float | None, Field(description="sum_logprob / num_tokens; null when nothing was "
                                                "scored.", examples=[-5.81])]
    perplexity: Annotated[float | None, Field(description="exp(-mean_logprob); null when nothing was scored or it "
                                              "exceeds the float range.", examples=[333.6])]
    is_greedy: Annotated[bool | None, Field(description="Every scored token had rank 1 (was the argmax); null when "
                                            "nothing was scored.", examples=[False])]
    num_windows: Annotated[int, Field(description="Engine sequences that scored the input (more than 1 with the "
                                      "sliding window).", examples=[1])]
    detection: Annotated[Detection | None, Field(description="Detection statistics; null unless detect, or when "
                                                 "nothing was scored.", examples=[{
                                                     "gltr": {"top_10": 0.62, "top_100": 0.2, "top_1000": 0.12,
                                                              "rest": 0.06},
                                                     "mean_log_rank": 1.9, "mean_entropy": 3.4,
                                                     "fast_detect_gpt": 1.7, "judge": None}])]
    explanation: Annotated[Explanation | None, Field(description="Attention and logit lens at the explained "
                                                     "positions; null unless explain.", examples=[{
                                                         "num_layers": 12, "num_heads": 12, "positions": []}])]


class ScoreUsage(TypedDict):
    prompt_tokens: Annotated[int, Field(description="Tokens sent (contexts and inputs).", examples=[10])]
    scored_tokens: Annotated[int, Field(description="Tokens given a logprob.", examples=[9])]
    total_tokens: Annotated[int, Field(description="prompt_tokens (nothing is generated).", examples=[10])]


class ScoreResponse(TypedDict):
    id: Annotated[str, Field(description="The request's id: `score-` and a random hex string.",
                             examples=["score-d62c2548824040539daea23e1a30518e"])]
    object: Annotated[Literal["score"], Field(description="Always `score`.", examples=["score"])]
    created: Annotated[int, Field(description="Unix time (seconds) of the response.", examples=[1700000000])]
    model: Annotated[str, Field(description="The served model's name.", examples=["gpt2"])]
    data: Annotated[list[ScoreResult], Field(description="One result per input, in request order.", examples=[[{
        "index": 0, "tokens": None, "token_ids": None, "token_logprobs": None, "ranks": None, "top_logprobs": None,
        "entropies": None, "logprob_variances": None, "num_context_tokens": 0, "num_tokens": 9, "sum_logprob": -52.3,
        "mean_logprob": -5.81, "perplexity": 333.6, "is_greedy": False, "num_windows": 1, "detection": None,
        "explanation": None}]])]
    usage: Annotated[ScoreUsage, Field(description="Token counts of the whole request.", examples=[
        {"prompt_tokens": 10, "scored_tokens": 9, "total_tokens": 10}])]
    detector: Annotated[DetectorInfo, Field(description="Whether a trained judge is loaded: then, with detect, every "
                                            "result's detection.judge holds its verdict.",
                                            examples=[{"loaded": False, "message": NO_JUDGE}])]
