"""What one request may cost, checked before the cost is paid.

Three checkpoints, each cheap and each refusing with a 400 that names the field and the limit
(a GPT2_* setting, listed in docs/deploy.md):
- before tokenizing: how many inputs, how many characters, logit_bias entries, stop strings;
- after tokenizing, before anything is planned or queued: sequences (prompts x n, or a long input's
  sliding windows), tokens the engine would process, entries the response would hold (check_cost;
  /v1/score's `validate` adds the positions `explain` reads);
- per sequence, at the engine's door: what the engine itself can run (app/engine/validation.py).
"""

import math
from dataclasses import dataclass

from app.api.errors import APIError
from app.config import Settings


@dataclass(frozen=True)
class Limits:
    max_inputs: int
    max_input_chars: int
    max_sequences: int  # per request: its share of the queue
    max_request_tokens: int
    max_response_entries: int
    max_logit_bias: int
    max_stop_chars: int
    min_stride: int
    max_explain_positions: int = 0

    @classmethod
    def from_settings(cls, s: Settings) -> "Limits":
        share = math.floor(s.max_request_share * s.max_queue)  # (admission counts over every API process)
        return cls(s.max_inputs, s.max_input_chars, max(1, share), s.max_request_tokens, s.max_response_entries,
                   s.max_logit_bias, s.max_stop_chars, s.min_stride, s.max_explain_positions)


def refuse(message: str, param: str, setting: str, code: str = "request_too_large") -> APIError:
    return APIError(400, f"{message} (the limit is GPT2_{setting.upper()})", param=param, code=code)


def check_texts(texts: list, limits: Limits, param: str) -> None:
    """How many inputs, and how many characters in all, before any is tokenized."""
    if len(texts) > limits.max_inputs:
        raise refuse(f"{len(texts)} inputs in one request; at most {limits.max_inputs} are allowed", param,
                     "max_inputs")
    chars = sum(len(t) for t in texts if isinstance(t, str))
    if chars > limits.max_input_chars:
        raise refuse(f"{chars} characters of text in one request; at most {limits.max_input_chars} are allowed",
                     param, "max_input_chars")


def check_sampling(logit_bias: dict | None, stop: list[str], limits: Limits) -> None:
    if logit_bias and len(logit_bias) > limits.max_logit_bias:
        raise refuse(f"logit_bias has {len(logit_bias)} entries; at most {limits.max_logit_bias} are allowed",
                     "logit_bias", "max_logit_bias")
    for s in stop:
        if len(s) > limits.max_stop_chars:
            raise refuse(f"a stop string has {len(s)} characters; at most {limits.max_stop_chars} are allowed",
                         "stop", "max_stop_chars")


def check_cost(sequences: int, tokens: int, entries: int, limits: Limits, param: str) -> None:
    """The engine sequences, tokens and response entries a request would take, all computed
    without building anything."""
    if sequences > limits.max_sequences:
        raise refuse(f"this request needs {sequences} engine sequences (one per prompt and choice, or per sliding "
                     f"window of a long input); one request may take at most {limits.max_sequences}, its share of "
                     "the queue (GPT2_MAX_QUEUE x GPT2_MAX_REQUEST_SHARE); split it", param, "max_request_share",
                     code="too_many_inputs")
    if tokens > limits.max_request_tokens:
        raise refuse(f"this request would make the engine process {tokens} tokens (prompts, windows and "
                     f"max_tokens, for every choice); at most {limits.max_request_tokens} are allowed", param,
                     "max_request_tokens")
    if entries > limits.max_response_entries:
        raise refuse(f"the response would hold {entries} per-token entries (positions x (1 + top alternatives)); "
                     f"at most {limits.max_response_entries} are allowed: ask for fewer alternatives or fewer "
                     "tokens", param, "max_response_entries")
