"""`explain` in POST /v1/score: the request's option, which positions it explains and what that
costs, and its part of the response (see docs/scoring.md#explain-attention-and-the-logit-lens).

The engine computes it beside the forward pass that scores the text (app/engine/readout.py); this
module only plans it and turns the engine's flat arrays into JSON.
"""

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.api.errors import APIError
from app.api.limits import Limits, check_explain
from app.engine import inspection
from app.engine.protocol import EngineInfo

MAX_ATTENTION_TOP_K = 1024  # GPT-2's longest context: a row is never longer
MAX_LENS_TOP_K = 20


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


class LensToken(BaseModel):
    token: str = Field(..., description="The token's text.", examples=[" the"])
    token_id: int = Field(..., description="Its id.", examples=[262])
    prob: float = Field(..., description="Its probability at this layer.", examples=[0.31])


class LensLayer(BaseModel):
    top: list[LensToken] = Field(..., description="The lens_top_k likeliest next tokens at this layer, most likely "
                                 "first.", examples=[[{"token": " the", "token_id": 262, "prob": 0.31}]])
    next_token_prob: float | None = Field(..., description="The probability of the text's own next token (the one "
                                          "at position + 1) at this layer; null at the last position.",
                                          examples=[0.02])


class AttentionLayer(BaseModel):
    heads: list[list[tuple[int, float]]] = Field(..., description="For each head, [position, weight] pairs: the "
                                                 "positions it attended to most, largest weight first.",
                                                 examples=[[[[2, 0.71], [0, 0.2]], [[0, 0.93], [2, 0.04]]]])
    mean: list[tuple[int, float]] = Field(..., description="The same for the heads' average weights.",
                                          examples=[[[0, 0.565], [2, 0.375]]])


class PositionExplanation(BaseModel):
    position: int = Field(..., description="The position explained (0 is the first token, of the context when "
                          "there is one).", examples=[3])
    token: str = Field(..., description="The token at that position.", examples=[" sat"])
    attention: list[AttentionLayer] | None = Field(..., description="One entry per layer (block 1 first); null "
                                                   "when attention_top_k is 0.", examples=[[{
                                                       "heads": [[[2, 0.71], [0, 0.2]]], "mean": [[2, 0.71]]}]])
    lens: list[LensLayer] | None = Field(..., description="One entry per layer: 0 is the embeddings, l the residual "
                                         "stream after block l, the last one the model's own prediction; null when "
                                         "lens_top_k is 0.", examples=[[{
                                             "top": [{"token": " the", "token_id": 262, "prob": 0.31}],
                                             "next_token_prob": 0.02}]])
    first_top1_layer: int | None = Field(..., description="The first layer at which the model's final prediction "
                                         "(its top token at the last layer) is already the top token; null without "
                                         "the lens.", examples=[2])
    settled_layer: int | None = Field(..., description="The layer from which on the top token stays the final "
                                      "prediction; null without the lens.", examples=[3])


class Explanation(BaseModel):
    num_layers: int = Field(..., description="Transformer blocks (L): `attention` has L entries, `lens` L + 1.",
                            examples=[12])
    num_heads: int = Field(..., description="Attention heads per block.", examples=[12])
    positions: list[PositionExplanation] = Field(..., description="The explained positions, in order.", examples=[[{
        "position": 3, "token": " sat", "attention": None, "lens": None, "first_top1_layer": None,
        "settled_layer": None}]])


def positions_to_explain(explain: Explain, num_context: int, num_tokens: int, which: str) -> list[int]:
    """The positions of one input (`which` names it in errors), ascending and distinct."""
    if explain.positions is None:
        return list(range(max(num_context - 1, 0), num_tokens))
    positions = sorted(set(explain.positions))
    if positions and positions[-1] >= num_tokens:
        raise APIError(400, f"explain.positions has {positions[-1]}, but the tokens{which} are numbered 0 to "
                       f"{num_tokens - 1} (context included)", param="explain.positions", code="invalid_value")
    return positions


def entries_per_position(explain: Explain, position: int, info: EngineInfo) -> int:
    """Values the response holds for one explained position (as check_cost counts entries)."""
    L, H = info.num_layers, info.num_heads
    attention = L * (H + 1) * min(explain.attention_top_k, position + 1)
    return attention + ((L + 1) * (explain.lens_top_k + 1) if explain.lens_top_k else 0)


def plan_explain(explain: Explain | None, inputs: list[tuple[int, int, int]], entries: int, info: EngineInfo,
                 limits: Limits) -> list[list[int]] | None:
    """The positions to explain in each input, given (context tokens, tokens, windows) of each; 400
    unless each is one window and the whole is within the limits. None without explain."""
    if explain is None:
        return None
    several = len(inputs) > 1
    plan = []
    for i, (num_context, num_tokens, windows) in enumerate(inputs):
        which = f" of input {i}" if several else ""
        if windows > 1:
            raise APIError(400, f"explain needs the whole input in one window, but the input{which} has {num_tokens} "
                           f"tokens, more than the model's context of {info.max_model_len}", param="explain",
                           code="invalid_value")
        plan.append(positions_to_explain(explain, num_context, num_tokens, which))
    check_explain(sum(map(len, plan)), entries + sum(entries_per_position(explain, p, info) for ps in plan for p in ps),
                  limits)
    return plan


def explain_params(explain: Explain, positions: list[int]) -> inspection.ExplainParams:
    return inspection.ExplainParams(positions, explain.attention_top_k, explain.lens_top_k)


def explanation(readout: inspection.Readout | None, token_ids: list[int], explain: Explain, info: EngineInfo,
                token_str) -> dict:
    """The engine's readout of one input -> its `explanation` (an Explanation, as plain data)."""
    explained = readout.explanation if readout is not None else []
    return {"num_layers": info.num_layers, "num_heads": info.num_heads,
            "positions": [position(e, token_ids, explain, info, token_str) for e in explained]}


def position(e: inspection.PositionExplanation, token_ids: list[int], explain: Explain, info: EngineInfo,
             token_str) -> dict:
    """One explained position (a PositionExplanation, as plain data)."""
    L, H = info.num_layers, info.num_heads
    out = {"position": e.position, "token": token_str(token_ids[e.position]), "attention": None, "lens": None,
           "first_top1_layer": None, "settled_layer": None}
    if explain.attention_top_k:
        k = min(explain.attention_top_k, e.position + 1)
        pairs = list(map(list, zip(e.attention_keys, e.attention_weights, strict=True)))
        rows = [pairs[j : j + k] for j in range(0, len(pairs), k)]  # L x (H + 1) rows of k pairs
        out["attention"] = [{"heads": rows[layer * (H + 1) : layer * (H + 1) + H], "mean": rows[layer * (H + 1) + H]}
                            for layer in range(L)]
    if explain.lens_top_k:
        k = explain.lens_top_k
        ids, probs, nexts = e.lens_token_ids, e.lens_probs, e.lens_next_probs
        out["lens"] = [{"top": [{"token": token_str(t), "token_id": t, "prob": p}
                                for t, p in zip(ids[layer * k : (layer + 1) * k], probs[layer * k : (layer + 1) * k],
                                                strict=True)],
                        "next_token_prob": nexts[layer] if nexts else None} for layer in range(L + 1)]
        top1 = ids[::k]  # each layer's likeliest token
        out["first_top1_layer"] = top1.index(top1[-1])
        out["settled_layer"] = next(layer for layer in range(L + 1) if all(t == top1[-1] for t in top1[layer:]))
    return out
