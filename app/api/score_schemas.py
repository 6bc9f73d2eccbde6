"""HTTP bodies of POST /v1/score (see docs/scoring.md).

Pydantic lives here, at the edge; `to_sampling_params()` converts to the engine's dataclass once.
"""

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
)

from app.api.schemas import Text, Texts, TokenIds, form, one_of
from app.api.score_explain import Explain, Explanation
from app.engine.sequence import SamplingParams

MAX_TOP_LOGPROBS = 20
NO_JUDGE = "no judge loaded; train one with gpt2-serve train-detector and set GPT2_DETECTOR"

# may be empty: then <|endoftext|> is the context; fail_fast: validation stops at the first bad id
ContextIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(fail_fast=True)]
ScoreInput = one_of(Text, Texts, TokenIds, Annotated[list[TokenIds], Field(min_length=1, fail_fast=True)])
ScoreContext = one_of(Text, Texts, ContextIds, Annotated[list[ContextIds], Field(min_length=1, fail_fast=True)])


def _kind(value: object) -> str:
    """What form a field took: text, texts, ids or id_lists."""
    return form(value).strip("[]")


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

    def to_sampling_params(self) -> SamplingParams:
        """Prefill-only: score the prompt, generate nothing."""
        return SamplingParams(max_tokens=0, temperature=0.0, prompt_logprobs=self.top_logprobs,
                              prompt_stats=self.detect)


class TopLogprob(BaseModel):
    token: str = Field(..., description="The token's text (`bytes:\\xNN` for part of a UTF-8 character).",
                       examples=[" the"])
    token_id: int = Field(..., description="The token's id.", examples=[262])
    logprob: float = Field(..., description="Its logprob (natural log) at this position.", examples=[-1.25])


class GLTRBuckets(BaseModel):
    top_10: float = Field(..., description="Fraction of scored tokens ranked 1-10.", examples=[0.62])
    top_100: float = Field(..., description="Fraction ranked 11-100.", examples=[0.2])
    top_1000: float = Field(..., description="Fraction ranked 101-1000.", examples=[0.12])
    rest: float = Field(..., description="Fraction ranked beyond 1000.", examples=[0.06])


class JudgeFeature(BaseModel):
    name: str = Field(..., description="The feature's name (docs/scoring.md lists them).", examples=["mean_log_rank"])
    value: float = Field(..., description="Its value for this input.", examples=[1.2])
    contribution: float = Field(..., description="Its share of the judge's decision (log-odds units, "
                                "relative to an average training text): positive pushes towards machine.",
                                examples=[2.3])


class JudgeVerdict(BaseModel):
    machine_probability: float = Field(..., ge=0.0, le=1.0, description="The trained judge's calibrated "
                                       "probability (0-1) that a machine wrote the input, at even prior odds.",
                                       examples=[0.93])
    verdict: Literal["machine", "human"] = Field(..., description="`machine` when machine_probability >= "
                                                 "threshold, else `human`.", examples=["machine"])
    threshold: float = Field(..., description="The judge's operating threshold (set when it was trained).",
                             examples=[0.5])
    top_features: list[JudgeFeature] = Field(..., description="The features that weighed most in this verdict, "
                                             "largest |contribution| first.", examples=[[
                                                 {"name": "mean_log_rank", "value": 1.2, "contribution": 2.3}]])


class DetectorInfo(BaseModel):
    """Whether a trained judge answers in `detection.judge`. Only the fields of its state are present."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"loaded": False, "message": NO_JUDGE}, {"loaded": True, "name": "demo-judge", "threshold": 0.5}]})

    loaded: bool = Field(..., description="A judge is loaded (GPT2_DETECTOR).", examples=[True])
    message: str | None = Field(None, description="Present when no judge is loaded: how to get one.",
                                examples=[NO_JUDGE])
    name: str | None = Field(None, description="Present when loaded: the judge's name.", examples=["demo-judge"])
    threshold: float | None = Field(None, description="Present when loaded: its operating threshold on "
                                    "machine_probability.", examples=[0.5])

    @model_serializer(mode="wrap")
    def _drop_absent(self, handler: SerializerFunctionWrapHandler):  # no return type: keeps the schema
        return {key: value for key, value in handler(self).items() if value is not None}


class Detection(BaseModel):
    gltr: GLTRBuckets = Field(..., description="GLTR's rank buckets (Gehrmann et al., 2019).",
                              examples=[{"top_10": 0.62, "top_100": 0.2, "top_1000": 0.12, "rest": 0.06}])
    mean_log_rank: float = Field(..., description="Mean natural log of the 1-based rank; lower looks more "
                                 "machine-like.", examples=[1.9])
    mean_entropy: float | None = Field(..., description="Mean entropy (nats) of the model's predictive "
                                       "distribution at the scored positions.", examples=[3.4])
    fast_detect_gpt: float | None = Field(..., description="Fast-DetectGPT's analytic criterion with this model "
                                          "as sampling and scoring model: about N(0, 1) on the model's own samples, "
                                          "higher = more machine-like; null if the model's variance is 0.",
                                          examples=[1.7])
    judge: JudgeVerdict | None = Field(None, description="The trained judge's verdict (GPT2_DETECTOR); null when "
                                       "no judge is loaded.", examples=[{
                                           "machine_probability": 0.93, "verdict": "machine", "threshold": 0.5,
                                           "top_features": [{"name": "mean_log_rank", "value": 1.2,
                                                             "contribution": 2.3}]}])


class ScoreResult(BaseModel):
    index: int = Field(..., description="Position of the input in the request.", examples=[0])
    tokens: list[str] | None = Field(None, description="The input's tokens (without the context); null unless "
                                     "return_tokens.", examples=[["The", " cat"]])
    token_ids: list[int] | None = Field(None, description="Their ids.", examples=[[464, 3797]])
    token_logprobs: list[float | None] | None = Field(None, description="Each token's logprob; the first is null "
                                                      "when there is no context.", examples=[[None, -7.1]])
    ranks: list[int | None] | None = Field(None, description="Each token's 1-based rank under the model (1 + "
                                           "the number of tokens strictly more likely: ties count in its favour); "
                                           "null where the logprob is.", examples=[[None, 412]])
    top_logprobs: list[list[TopLogprob] | None] | None = Field(None, description="The top_logprobs most likely "
                                                               "tokens at each position, most likely first; the "
                                                               "first is null when there is no context. null "
                                                               "unless top_logprobs > 0 and return_tokens.",
                                                               examples=[[None, [{"token": " cat", "token_id": 3797,
                                                                                  "logprob": -5.2}]]])
    entropies: list[float | None] | None = Field(None, description="Entropy (nats) of the model's predictive "
                                                 "distribution at each token's position; the first is null when "
                                                 "there is no context. null unless detect and return_tokens.",
                                                 examples=[[None, 4.7]])
    logprob_variances: list[float | None] | None = Field(None, description="Variance of log p under the model's "
                                                         "distribution at each token's position (Fast-DetectGPT's "
                                                         "sigma squared); the first is null when there is no "
                                                         "context. null unless detect and return_tokens.",
                                                         examples=[[None, 6.1]])
    num_context_tokens: int = Field(..., description="Tokens of the context (0 without one).", examples=[0])
    num_tokens: int = Field(..., description="Tokens scored.", examples=[9])
    sum_logprob: float = Field(..., description="Sum of the scored tokens' logprobs (the loglikelihood).",
                               examples=[-52.3])
    mean_logprob: float | None = Field(..., description="sum_logprob / num_tokens; null when nothing was scored.",
                                       examples=[-5.81])
    perplexity: float | None = Field(..., description="exp(-mean_logprob); null when nothing was scored or it "
                                     "exceeds the float range.", examples=[333.6])
    is_greedy: bool | None = Field(..., description="Every scored token had rank 1 (was the argmax); null when "
                                   "nothing was scored.", examples=[False])
    num_windows: int = Field(..., description="Engine sequences that scored the input (more than 1 with the "
                             "sliding window).", examples=[1])
    detection: Detection | None = Field(None, description="Detection statistics; null unless detect, or when "
                                        "nothing was scored.", examples=[{
                                            "gltr": {"top_10": 0.62, "top_100": 0.2, "top_1000": 0.12, "rest": 0.06},
                                            "mean_log_rank": 1.9, "mean_entropy": 3.4, "fast_detect_gpt": 1.7}])
    explanation: Explanation | None = Field(None, description="Attention and logit lens at the explained positions; "
                                            "null unless explain.", examples=[{"num_layers": 12, "num_heads": 12,
                                                                               "positions": []}])


class ScoreUsage(BaseModel):
    prompt_tokens: int = Field(..., description="Tokens sent (contexts and inputs).", examples=[10])
    scored_tokens: int = Field(..., description="Tokens given a logprob.", examples=[9])
    total_tokens: int = Field(..., description="prompt_tokens (nothing is generated).", examples=[10])


class ScoreResponse(BaseModel):
    id: str = Field(..., description="The request's id: `score-` and a random hex string.",
                    examples=["score-d62c2548824040539daea23e1a30518e"])
    object: Literal["score"] = Field("score", description="Always `score`.", examples=["score"])
    created: int = Field(..., description="Unix time (seconds) of the response.", examples=[1700000000])
    model: str = Field(..., description="The served model's name.", examples=["gpt2"])
    data: list[ScoreResult] = Field(..., description="One result per input, in request order.", examples=[[{
        "index": 0, "tokens": None, "token_ids": None, "token_logprobs": None, "ranks": None, "top_logprobs": None,
        "num_context_tokens": 0, "num_tokens": 9, "sum_logprob": -52.3, "mean_logprob": -5.81, "perplexity": 333.6,
        "is_greedy": False, "num_windows": 1, "detection": None}]])
    usage: ScoreUsage = Field(..., description="Token counts of the whole request.",
                              examples=[{"prompt_tokens": 10, "scored_tokens": 9, "total_tokens": 10}])
    detector: DetectorInfo = Field(..., description="Whether a trained judge is loaded: then, with detect, every "
                                   "result's detection.judge holds its verdict.",
                                   examples=[{"loaded": False, "message": NO_JUDGE}])
