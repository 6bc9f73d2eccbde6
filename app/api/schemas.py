"""HTTP request and response bodies (OpenAI's legacy completions API, plus extensions).

Pydantic lives here, at the edge; `to_sampling_params()` converts to the engine's dataclass once.
"""

from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from app.engine.protocol import SamplingParams

MAX_LOGPROBS = 5  # as OpenAI
MAX_STOP = 4
MAX_TOP_K = 1 << 31  # a larger top_k keeps every token, as this one does
MAX_ID_DIGITS = 10  # a token id (a logit_bias key) has at most 10 digits: refused by length before int()
SEEDS = (-(2**63), 2**64)  # a seed is a signed or unsigned 64-bit integer


def check_text(value: str) -> str:
    """Text the tokenizer can take: valid Unicode (JSON's \\ud800 escapes can carry lone surrogates,
    which no encoding can hold) and no NUL characters."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters (\\u0000)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"is not valid Unicode text: a lone surrogate ({exc.object[exc.start]!a}) at character "
                         f"{exc.start}") from None
    return value


def check_texts(values: list[str]) -> list[str]:
    """check_text for a list, at C speed when all is well (one join, one scan, one encode)."""
    joined = "\n".join(values)
    if "\x00" in joined or not joined.isascii():
        try:
            check_text(joined)
        except ValueError:
            for i, value in enumerate(values):
                try:
                    check_text(value)
                except ValueError as exc:
                    raise ValueError(f"text {i} {exc}") from None
    return values


def form(value: object) -> str:
    """Which form a prompt-like field took: [text], [texts], [ids] or [id_lists]. (The brackets keep
    these tags out of the field names in error messages, see errors.describe_validation_error.)"""
    if isinstance(value, list) and value:
        if isinstance(value[0], str):
            return "[texts]"
        if isinstance(value[0], list):
            return "[id_lists]"
    return "[ids]" if isinstance(value, list) else "[text]"


def one_of(text, texts, ids, id_lists):
    """A text, texts, token ids or lists of token ids, validated as the one form the value has (a plain
    union would try each form in turn: 6x slower on a long list of token ids)."""
    return Annotated[Annotated[text, Tag("[text]")] | Annotated[texts, Tag("[texts]")] | Annotated[ids, Tag("[ids]")]
                     | Annotated[id_lists, Tag("[id_lists]")], Discriminator(form)]


Text = Annotated[str, AfterValidator(check_text)]
# fail_fast: validating a list stops at its first bad element (one error, not a million)
Texts = Annotated[list[str], Field(min_length=1, fail_fast=True), AfterValidator(check_texts)]
TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1, fail_fast=True)]
Prompt = one_of(Text, Texts, TokenIds, Annotated[list[TokenIds], Field(min_length=1, fail_fast=True)])


class StreamOptions(BaseModel):
    include_usage: bool = Field(False, description="Send a last chunk with `usage` (and no choices) before "
                                "[DONE].", examples=[True])


class CompletionRequest(BaseModel):
    """POST /v1/completions. Unknown fields are ignored, as OpenAI-compatible servers do."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [
        {"model": "gpt2", "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}]})

    model: str | None = Field(None, description="The served model's name (see GET /v1/models); omit for the default.",
                              examples=["gpt2"])
    prompt: Prompt = Field(..., description="A string, a list of strings, a list of token ids, or a list of "
                           "token-id lists. Each prompt gets `n` choices.", examples=["Once upon a time"])
    max_tokens: int | None = Field(16, ge=0, description="Most tokens to generate per choice; 0 (with echo) scores "
                                   "the prompt only. null means 16.", examples=[16])
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="Sampling temperature; 0 is greedy.", examples=[0.7])
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling: keep the most likely tokens whose "
                         "probability adds up to top_p.", examples=[0.95])
    n: int = Field(1, ge=1, le=16, description="Choices per prompt.", examples=[1])
    best_of: int | None = Field(None, description="Only best_of = n (or null) is supported.", examples=[None])
    stream: bool = Field(False, description="Stream Server-Sent Events, one chunk per generated token.",
                         examples=[False])
    stream_options: StreamOptions | None = Field(None, description="Streaming options (include_usage).",
                                                 examples=[{"include_usage": True}])
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS, description="Return the logprob of every returned "
                                 "token and the `logprobs` most likely alternatives at each position (0-5).",
                                 examples=[1])
    echo: bool = Field(False, description="Put the prompt before the completion (with its logprobs when asked; the "
                       "first prompt token's logprob is null).", examples=[False])
    stop: Text | Annotated[list[str], AfterValidator(check_texts)] | None = Field(
        None, validate_default=True, examples=[["\n\n"]],
                                         description="Up to 4 strings that end the completion; the stop string "
                                         "is not included in the text.")
    seed: int | None = Field(None, ge=SEEDS[0], lt=SEEDS[1], description="Seed for sampling (a 64-bit integer): "
                             "the same seed gives the same tokens, alone or in any batch.", examples=[42])
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="Penalise tokens that already appeared.",
                                    examples=[0.0])
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="Penalise tokens by how often they "
                                     "appeared.", examples=[0.0])
    logit_bias: dict[str, float] | None = Field(None, description="Token id (as a string) -> bias in [-100, 100] "
                                                "added to its logit.", examples=[{"50256": -100}])
    user: Text | None = Field(None, description="An end-user id, for your own logs; not used.", examples=["user-1"])
    timeout: float | None = Field(None, gt=0, description="Seconds this request may take (at most the server's "
                                  "GPT2_REQUEST_TIMEOUT); then it is stopped: 504 `timeout`, or an error event in "
                                  "a stream.", examples=[30])
    suffix: str | None = Field(None, description="Not supported (must be null).", examples=[None])
    # extensions (vLLM's names)
    top_k: int = Field(0, ge=-1, description="Keep only the k most likely tokens; 0 or -1 turns it off.",
                       examples=[50])
    min_p: float = Field(0.0, ge=0.0, le=1.0, description="Drop tokens less likely than min_p times the most "
                         "likely one.", examples=[0.05])
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0, description="Divide positive (multiply negative) "
                                      "logits of tokens seen in the prompt or output; 1 is off.", examples=[1.1])
    min_tokens: int = Field(0, ge=0, description="Generate at least this many tokens before EOS or a stop token "
                            "may end the choice.", examples=[0])
    ignore_eos: bool = Field(False, description="Keep generating after the end-of-text token.", examples=[False])
    stop_token_ids: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list, max_length=64, fail_fast=True,
                                                              description="Token ids that end the choice (kept in "
                                                              "the token count, not in the text).", examples=[[198]])

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings are allowed, got {len(stops)}")
        if any(s == "" for s in stops):
            raise ValueError("stop strings must not be empty")
        return stops

    @field_validator("logit_bias")
    @classmethod
    def _check_logit_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (value or {}).items():
            if not (key.isascii() and key.isdigit() and len(key) <= MAX_ID_DIGITS):  # "²".isdigit() is True
                raise ValueError(f"keys must be token ids (at most {MAX_ID_DIGITS} digits), got {key[:20]!r}"
                                 + ("..." if len(key) > 20 else ""))
            if not -100.0 <= bias <= 100.0:
                raise ValueError(f"bias for token {key} must lie in [-100, 100], got {bias}")
        return value

    @model_validator(mode="after")
    def _check_combinations(self) -> "CompletionRequest":
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of is not supported unless it equals n")
        if self.suffix is not None:
            raise ValueError("suffix is not supported")
        if self.max_tokens is None:
            self.max_tokens = 16
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens may be 0 only with echo=true (to score the prompt)")
        if self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})")
        return self

    def prompts(self) -> list[str | list[int]]:
        """The prompts, one entry each (a text or token ids)."""
        prompt = self.prompt
        if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
            return [prompt]
        return list(prompt)

    def to_sampling_params(self, choice: int = 0) -> SamplingParams:
        """The engine's parameters for choice number `choice` (seeds differ per choice)."""
        return SamplingParams(
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=min(max(self.top_k, 0), MAX_TOP_K),
            min_p=self.min_p,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repetition_penalty=self.repetition_penalty,
            logit_bias={int(k): v for k, v in (self.logit_bias or {}).items()},
            min_tokens=self.min_tokens,
            seed=None if self.seed is None else (self.seed + choice) % 2**64,  # any integer, as torch takes seeds
            ignore_eos=self.ignore_eos,
            stop_token_ids=list(self.stop_token_ids),
            logprobs=self.logprobs,
            prompt_logprobs=self.logprobs if self.echo else None,
        )


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list, description="Each returned token's text (`bytes:\\xNN` for "
                              "part of a UTF-8 character), echoed prompt tokens first.",
                              examples=[[" Paris", "."]])
    token_logprobs: list[float | None] = Field(default_factory=list, description="Each token's logprob; null for "
                                               "the first prompt token.", examples=[[-1.52, -0.87]])
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list, description="At each position, the "
                                                        "`logprobs` most likely tokens (text -> logprob), plus the "
                                                        "chosen token when it is not among them; null for the "
                                                        "first prompt token.",
                                                        examples=[[{" Paris": -1.52, " the": -2.1},
                                                                   {".": -0.87, ",": -1.9}]])
    text_offset: list[int] = Field(default_factory=list, description="Character offset of each token in the "
                                   "choice's `text` (echoed prompt included).", examples=[[0, 6]])


class CompletionChoice(BaseModel):
    index: int = Field(..., description="prompt index * n + choice number, as OpenAI numbers them.", examples=[0])
    text: str = Field(..., description="The generated text, after the prompt when echo; a stop string that ended "
                      "it is left out.", examples=[" Paris."])
    logprobs: CompletionLogprobs | None = Field(None, description="Per-token logprobs; null unless the request "
                                                "set `logprobs`.", examples=[{
                                                    "tokens": [" Paris", "."], "token_logprobs": [-1.52, -0.87],
                                                    "top_logprobs": [{" Paris": -1.52}, {".": -0.87}],
                                                    "text_offset": [0, 6]}])
    finish_reason: Literal["stop", "length"] | None = Field(None, description="stop: EOS, a stop string or a stop "
                                                            "token id; length: max_tokens or the context is full. "
                                                            "null in a stream's chunks before the choice's last.",
                                                            examples=["stop"])


class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(..., description="Of prompt_tokens, those whose keys and values (and scores) were "
                               "reused from the prefix cache rather than computed (GPT2_PREFIX_CACHING).",
                               examples=[0])


class Usage(BaseModel):
    prompt_tokens: int = Field(..., description="Tokens of the prompts, each prompt counted once (even with n > 1).",
                               examples=[5])
    completion_tokens: int = Field(..., description="Tokens generated, summed over all choices (echoed prompt "
                                   "tokens not included).", examples=[8])
    total_tokens: int = Field(..., description="prompt_tokens + completion_tokens.", examples=[13])
    prompt_tokens_details: PromptTokensDetails | None = Field(None, description="How the prompt tokens were "
                                                              "processed, as in OpenAI's usage.",
                                                              examples=[{"cached_tokens": 0}])


class CompletionResponse(BaseModel):
    id: str = Field(..., description="The request's id: `cmpl-` and a random hex string.",
                    examples=["cmpl-9b1deb4d3b7d4bad9bdd2b0d7b3dcb6d"])
    object: Literal["text_completion"] = Field("text_completion", description="Always `text_completion`.",
                                               examples=["text_completion"])
    created: int = Field(..., description="Unix time (seconds) of the request.", examples=[1700000000])
    model: str = Field(..., description="The served model's name.", examples=["gpt2"])
    choices: list[CompletionChoice] = Field(..., description="n choices per prompt, in `index` order.",
                                            examples=[[{"index": 0, "text": " Paris.", "logprobs": None,
                                                        "finish_reason": "stop"}]])
    usage: Usage | None = Field(None, description="Token counts of the whole request (in a stream: null except in "
                                "the last chunk, sent with stream_options.include_usage).",
                                examples=[{"prompt_tokens": 5, "completion_tokens": 8, "total_tokens": 13}])


class TokenizeRequest(BaseModel):
    model: str | None = Field(None, description="The served model's name; optional.", examples=["gpt2"])
    prompt: Text = Field(..., description="Text to tokenize.", examples=["Hello world"])
    add_special_tokens: bool = Field(False, description="GPT-2 adds none; accepted for compatibility.",
                                     examples=[False])


class TokenizeResponse(BaseModel):
    tokens: list[int] = Field(..., description="The prompt's GPT-2 token ids (no special tokens added).",
                              examples=[[15496, 995]])
    count: int = Field(..., description="Number of tokens.", examples=[2])
    max_model_len: int = Field(..., description="The served model's longest prompt + completion, in tokens.",
                               examples=[1024])


class DetokenizeRequest(BaseModel):
    model: str | None = Field(None, description="The served model's name; optional.", examples=["gpt2"])
    tokens: list[Annotated[int, Field(ge=0)]] = Field(..., fail_fast=True, description="Token ids.",
                                                      examples=[[15496, 995]])


class DetokenizeResponse(BaseModel):
    prompt: str = Field(..., description="The text of the token ids (special tokens kept).", examples=["Hello world"])


class TokenizerInfo(BaseModel):
    tokenizer_class: str = Field(..., description="Class name of the Hugging Face tokenizer.",
                                 examples=["GPT2TokenizerFast"])
    eos_token: str | None = Field(..., description="The end-of-text token; null if the tokenizer has none.",
                                  examples=["<|endoftext|>"])
    eos_token_id: int | None = Field(..., description="Its id; null if there is none.", examples=[50256])
    bos_token: str | None = Field(..., description="The beginning-of-text token; null if there is none.",
                                  examples=["<|endoftext|>"])
    pad_token: str | None = Field(..., description="The padding token; null if there is none (as for GPT-2).",
                                  examples=[None])
    vocab_size: int = Field(..., description="Number of tokens, added tokens included.", examples=[50257])
    model_max_length: int = Field(..., description="The served model's longest prompt + completion, in tokens "
                                  "(max_model_len).", examples=[1024])


class ModelCard(BaseModel):
    id: str = Field(..., description="The name clients pass as `model` (GPT2_SERVED_MODEL_NAME, else GPT2_MODEL).",
                    examples=["gpt2"])
    object: Literal["model"] = Field("model", description="Always `model`.", examples=["model"])
    created: int = Field(..., description="Unix time (seconds) when the server started.", examples=[1700000000])
    owned_by: str = Field("gpt2-serve", description="Always `gpt2-serve`.", examples=["gpt2-serve"])
    root: str = Field(..., description="GPT2_MODEL: the hub id or directory it was loaded from.", examples=["gpt2"])
    max_model_len: int = Field(..., description="Longest prompt + completion, in tokens.", examples=[1024])
    device: str = Field(..., description="The torch device the model runs on.", examples=["cuda"])
    dtype: str = Field(..., description="The weights' dtype: float32, bfloat16 or float16.", examples=["bfloat16"])
    load_format: str = Field(..., description="`dummy` means RANDOM weights: outputs are meaningless.",
                             examples=["auto"])
    num_parameters: int = Field(..., description="Parameter count, the lm_head tied to the token embedding.",
                                examples=[124439808])


class ModelList(BaseModel):
    object: Literal["list"] = Field("list", description="Always `list`.", examples=["list"])
    data: list[ModelCard] = Field(..., description="The one model this replica serves.", examples=[[{
        "id": "gpt2", "object": "model", "created": 1700000000, "owned_by": "gpt2-serve", "root": "gpt2",
        "max_model_len": 1024, "device": "cuda", "dtype": "bfloat16", "load_format": "auto",
        "num_parameters": 124439808}]])
