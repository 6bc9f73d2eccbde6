"""One Settings object for the whole service, read from GPT2_* environment variables (`gpt2-serve serve`
also takes each as a flag: app/cli.py). Each section is a class, shown as a group by `--help`;
Settings joins them, so the variables stay flat (GPT2_PORT)."""

import re
from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

KEY_CLASS = re.compile(r"[A-Za-z0-9_.-]{1,32}")
DEFAULT_KEY_CLASS = "default"  # keys given without a class
ANONYMOUS_KEY_CLASS = "anonymous"  # callers without keys (GPT2_API_KEYS unset): shared by client address


class ModelSettings(BaseModel):
    """Model: what is loaded, on which device, in which precision."""

    model: str = Field("gpt2", description="Hub id (gpt2, gpt2-medium, distilgpt2, ...) or a local "
                       "Hugging Face directory (config.json + weights + tokenizer files).")
    served_model_name: str | None = Field(None, description="Name clients pass as `model`; "
                                          "defaults to GPT2_MODEL.")
    load_format: Literal["auto", "dummy"] = Field("auto", description="`dummy`: random weights with "
                                                  "the model's real shapes, no download; outputs "
                                                  "are meaningless.")
    device: str = Field("auto", description="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bfloat16 (or float16) on a GPU, float32 on CPU.")
    seed: int = Field(0, description="Seed of the engine's generator for unseeded sampled requests.")


class EngineSettings(BaseModel):
    """Engine: the batch, the step's token budget, the queue and the processes."""

    max_batch_size: int = Field(32, ge=1, description="Sequences running at once (KV-cache slots).")
    max_num_batched_tokens: int = Field(2048, ge=1, description="Tokens per engine step (decodes + "
                                        "prefill chunks); long prompts are prefilled in chunks.")
    max_model_len: int | None = Field(None, ge=1, description="Longest prompt + completion; "
                                      "defaults to the model's n_positions (1024 for GPT-2).")
    max_queue: int = Field(256, ge=0, description="Sequences waiting for a slot; beyond it new "
                           "requests get 429.")
    step_timeout: float = Field(60.0, gt=0, description="Seconds without any word from the engine, while it has "
                                "work, after which it counts as hung: requests in flight fail, the probes answer "
                                "503 and the server exits. A step running longer than its size makes likely (by "
                                "the engine's own measured speed) is still vouched for by the engine's heartbeats.")
    prefix_caching: bool = Field(True, description="Reuse the keys, values and prompt scores of a prompt's "
                                 "longest prefix already computed (by a running sequence, or kept from a "
                                 "finished one until its slot is needed) instead of computing them again.")
    cuda_graphs: Literal["auto", "off"] = Field("auto", description="auto: on a GPU, decode steps run at fixed "
                                                "shapes captured once as CUDA graphs (at start-up, before ready); "
                                                "off: every step eager.")
    api_servers: int = Field(1, ge=1, le=64, description="API server processes sharing the port and the one "
                             "engine process (more lets the HTTP work use more cores).")


class HTTPSettings(BaseModel):
    """HTTP: the address, API keys, connections and fair sharing."""

    host: str = Field("127.0.0.1", description="Address to bind (0.0.0.0 in containers).")
    port: int = Field(8000, ge=1, le=65535, description="Port to bind.")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated Bearer keys, each `key` or `class:key` (the class names "
        "the key in metrics and weighs it in fair sharing); empty means no auth.")
    max_request_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest request body "
                                   "accepted (413 beyond).")
    drain_timeout: float = Field(30.0, ge=0, description="Seconds admitted requests get to finish "
                                 "after SIGTERM before the process exits.")
    docs: Literal["public", "keys", "off"] = Field("public", description="/docs and /openapi.json: open to "
                                                   "all, behind GPT2_API_KEYS like the API, or not served.")
    key_concurrency: int = Field(0, ge=0, description="Requests one API key may have in flight at once, "
                                 "across all API processes (429 beyond); 0: no limit.")
    fair_share: bool = Field(True, description="Share admission and the engine's waiting queue fairly between API "
                             "keys (between client addresses without keys): a caller under its share is admitted "
                             "even when others filled the queue, and the queue serves callers in weighted fair "
                             "order. false: first come, first served.")
    key_class_weights: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=dict, description="Comma-separated class=weight pairs (e.g. interactive=4,batch=1): a "
        "class's keys get that many times the share of a weight-1 key. Unnamed classes weigh 1.")
    max_connections: int | None = Field(None, ge=1, description="Open connections per API process; a request "
                                        "on a connection beyond it gets 503 `too_many_connections` and the "
                                        "connection is closed. Unset: no limit.")
    keep_alive_timeout: float = Field(5.0, gt=0, description="Seconds an idle keep-alive connection stays open.")
    read_timeout: float = Field(30.0, gt=0, description="Seconds a client may take to send its whole request "
                                "(headers, then the whole body: one deadline, not one per read); 408 beyond.")


class LimitSettings(BaseModel):
    """Limits: what one request may cost (checked before the cost is paid)."""

    request_timeout: float = Field(600.0, gt=0, description="Seconds a request may take; then it is aborted "
                                   "(504 `timeout`, or an error event in a stream). A request's own `timeout` "
                                   "field may ask for less.")
    max_inputs: int = Field(256, ge=1, description="Prompts per completion request, inputs per /v1/score "
                            "request.")
    max_input_chars: int = Field(524_288, ge=1, description="Characters of text per request, all prompts "
                                 "(or inputs and contexts, or /tokenize text) together, before tokenizing.")
    max_request_share: float = Field(0.5, gt=0, le=1, description="The share of GPT2_MAX_QUEUE one request's "
                                     "sequences (prompts x n, or a long input's windows) may take.")
    max_request_tokens: int = Field(131072, ge=1, description="Tokens one request may make the engine process: "
                                    "every sequence's prompt (each sliding window's) plus its max_tokens.")
    max_response_entries: int = Field(1_048_576, ge=1, description="Per-token entries one response may hold: "
                                      "returned positions x (1 + top alternatives).")
    max_logit_bias: int = Field(300, ge=0, description="Entries of logit_bias per request (OpenAI's limit).")
    max_stop_chars: int = Field(256, ge=1, description="Characters per stop string.")
    min_stride: int = Field(64, ge=1, description="Smallest sliding-window stride /v1/score accepts.")
    max_explain_positions: int = Field(1024, ge=0, description="Positions one /v1/score request may explain "
                                       "(`explain`), all inputs together; each costs the engine L + 1 rows of the "
                                       "unembedding (docs/scoring.md). 0 turns explain off.")


class ExtraSettings(BaseModel):
    """Extras: the page, the judge and the embeddings' reference."""

    ui: bool = Field(True, description="Serve the page at /ui (scoring and generation in a browser).")
    detector: str | None = Field(None, description="Directory of a judge trained by `gpt2-serve train-detector`: "
                                 "/v1/score with detect=true adds its machine probability and verdict.")
    embedding_reference: str | None = Field(None, description="A reference corpus (a file of texts, one per line "
                                            "or .jsonl, or a directory of them) whose per-dimension mean and std "
                                            "standardise /v1/embeddings. The engine computes them at start-up and "
                                            "saves them beside the model (docs/embeddings.md).")


class ObservabilitySettings(BaseModel):
    """Observability: logs and metrics."""

    log_format: Literal["json", "text"] = Field("json", description="json: one object per line; "
                                                "text: for a terminal.")
    log_level: str = Field("INFO", description="Python logging level.")
    log_prompts: bool = Field(False, description="Include prompt text in request logs.")
    metrics: bool = Field(True, description="Record Prometheus metrics from engine stats.")


class Settings(BaseSettings, ModelSettings, EngineSettings, HTTPSettings, LimitSettings, ExtraSettings,
               ObservabilitySettings):
    """Every knob of gpt2-serve. Built in create_app()/the CLI, never at import time."""

    # (hide_input_in_errors: a bad GPT2_API_KEYS must not print the keys in the error)
    model_config = SettingsConfigDict(env_prefix="GPT2_", env_file=None, extra="ignore", hide_input_in_errors=True)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        """Fail closed: keys that are set but hold no key (",", " ", "") are refused, never read as
        'no auth'. Unset means no auth (and the server warns at start-up)."""
        keys = [key.strip() for key in value.split(",")] if isinstance(value, str) else value
        if isinstance(keys, list) and (isinstance(value, str) or keys) and not all(keys):
            raise ValueError("the API keys are set but hold an empty key; give comma-separated non-empty keys, "
                             "or leave it unset to serve without authentication")
        for entry in keys if isinstance(keys, list) else []:
            name, sep, key = entry.partition(":") if isinstance(entry, str) else ("", "", "")
            if sep and not (KEY_CLASS.fullmatch(name) and key):
                raise ValueError("an API key entry with a ':' is class:key, the class made of letters, "
                                 "digits, '_', '-' or '.' (at most 32) and the key non-empty; write a key that "
                                 "holds a ':' as default:<key>")
        return keys

    @field_validator("key_class_weights", mode="before")
    @classmethod
    def _split_weights(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        weights = {}
        for pair in filter(None, (p.strip() for p in value.split(","))):
            name, _, weight = pair.partition("=")
            if not KEY_CLASS.fullmatch(name.strip()):
                raise ValueError(f"{pair!r}: give class=weight pairs, class names of letters, digits, '_', '-' or '.'")
            weights[name.strip()] = weight
        return weights

    @field_validator("key_class_weights")
    @classmethod
    def _check_weights(cls, value: dict[str, float]) -> dict[str, float]:
        bad = [name for name, weight in value.items() if not 0 < weight <= 1000]
        if bad:
            raise ValueError(f"weights must lie in (0, 1000]; {', '.join(bad)} do not")
        return value

    @property
    def keys_by_class(self) -> list[tuple[str, str]]:
        """(class, key) for each API key: `class:key` entries, or class "default"."""
        out = []
        for entry in self.api_keys:
            name, sep, key = entry.partition(":")
            out.append((name, key) if sep else (DEFAULT_KEY_CLASS, entry))
        return out

    @property
    def model_name(self) -> str:
        """The name the API serves the model under."""
        return self.served_model_name or self.model
