"""What a request may read from the model's hidden states, and what comes back: explanations
(attention weights and the logit lens at chosen positions) and embeddings (pooled hidden states).

Plain msgspec Structs, no torch: they cross the process boundary inside SamplingParams and
RequestOutput. The engine computes them in readout.py, beside the forward pass of the prompt;
the maths is app/model/lens.py.

Layers are numbered as transformers' `output_hidden_states` numbers them: 0 is the embeddings
(token + position), l in 1..L-1 the residual stream after block l, and L the final hidden state
(after the final layer norm). Attention layer l (0-based) is block l's.
"""

import msgspec

POOLINGS = ("mean", "last")


class ExplainParams(msgspec.Struct, array_like=True, omit_defaults=True):
    """Explain these prompt positions (ascending, each in [0, prompt length))."""

    positions: list[int]
    attention_top_k: int = 0  # per layer, head and the heads' mean: the k keys weighted most (0: none)
    lens_top_k: int = 0  # per layer 0..L: the k likeliest next tokens under the logit lens (0: no lens)


class EmbedParams(msgspec.Struct, array_like=True, omit_defaults=True):
    """Pool the prompt's hidden states into one vector per (pooling, layer), in that order."""

    layers: list[int]  # 0..L, see the module's docstring
    # "mean" over every prompt position, "last": the last position
    pooling: list[str] = msgspec.field(default_factory=lambda: ["mean"])
    standardize: bool = False  # subtract the reference corpus's mean and divide by its std, per dimension
    normalize: bool = True  # to unit L2 norm (after standardizing)


class PositionExplanation(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    """One explained position p. Arrays are flat, row-major:
    attention [L, H + 1, k] with k = min(attention_top_k, p + 1): for each layer, each head and then
    the heads' mean, the positions attended to most, largest weight first, and their weights;
    lens [L + 1, lens_top_k]: the likeliest next tokens read at each layer, most likely first, and
    their probabilities; lens_next_probs [L + 1]: the probability of the prompt's token at p + 1 at
    each layer (empty at the prompt's last position)."""

    position: int
    attention_keys: list[int] = []
    attention_weights: list[float] = []
    lens_token_ids: list[int] = []
    lens_probs: list[float] = []
    lens_next_probs: list[float] = []


class Readout(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    """What was read from one sequence's hidden states (on the output that ends its prompt)."""

    explanation: list[PositionExplanation] = []
    embeddings: list[list[float]] = []  # one per (pooling, layer) of EmbedParams; partial sums until then
