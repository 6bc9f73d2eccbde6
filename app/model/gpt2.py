"""GPT-2 in one file: the forward pass over packed tokens and a preallocated slot KV cache.

Tokens of many sequences travel packed along one axis T, so every matmul (the bulk of the
work) runs once per step for the whole batch. Only attention looks at sequences apart:
decoding sequences (one new token each) attend together over a range of cache slots; each
prefill chunk attends over its own slot with a causal mask.

Shapes: T packed tokens, C n_embd, H n_head, D head_dim, S cache slots, P n_positions,
V vocab, L n_layer.
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class GPT2Config:
    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    layer_norm_epsilon: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def num_parameters(self) -> int:
        """Parameter count with the lm_head tied to the token embedding (as GPT-2 is)."""
        c = self.n_embd
        per_layer = 12 * c * c + 13 * c  # qkv, proj, fc, fc2 weights and biases, two layer norms
        return self.vocab_size * c + self.n_positions * c + self.n_layer * per_layer + 2 * c


@dataclass
class Prefill:
    """One prefill chunk inside the packed batch: tokens [start, start+length) of the pack are
    positions [first_pos, first_pos+length) of the sequence in cache slot `slot`."""

    start: int
    length: int
    slot: int
    first_pos: int
    mask: Tensor | None = None  # [length, first_pos + length] bool when first_pos > 0, else causal


@dataclass
class AttentionPlan:
    """How the packed tokens attend. The first `num_decode` tokens are decodes (one per
    sequence); the rest are prefill chunks, in order."""

    num_decode: int
    # decodes attend over cache slots [slot_lo, slot_lo + R) and key positions [0, span)
    slot_lo: int = 0
    decode_rows: Tensor | None = None  # [num_decode] row of each decode within the slot range; None: R rows, in order
    decode_mask: Tensor | None = None  # [R, 1, 1, span] bool, True = may attend
    prefills: tuple[Prefill, ...] = ()


@dataclass
class Capture:
    """Packed rows whose residual stream the forward keeps, by layer: `rows[l]` [R] -> `residuals[l]`
    [R, C], the stream entering block l (0: the embeddings). (The final hidden state is the output.)"""

    rows: dict[int, Tensor]
    residuals: dict[int, Tensor] = field(default_factory=dict)


class KVCache:
    """Keys and values for every slot and position: [L, S, H, P, D] each, allocated once."""

    def __init__(self, config: GPT2Config, num_slots: int, max_len: int, device, dtype):
        shape = (config.n_layer, num_slots, config.n_head, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)

    @property
    def num_slots(self) -> int:
        return self.k.shape[1]

    @property
    def max_len(self) -> int:
        return self.k.shape[3]


class Linear(nn.Linear):
    """nn.Linear that, once `pack()`ed on a CPU, multiplies through oneDNN with its weight
    reordered into oneDNN's blocked layout: 2-4x the default BLAS's speed at serving batch
    sizes on AVX-512 machines (bench/engine.py); results equal F.linear's to fp32 rounding."""

    packed: Tensor | None = None

    def pack(self) -> None:
        self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach())

    def forward(self, x: Tensor) -> Tensor:
        if self.packed is None:
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


class Block(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        c, eps = config.n_embd, config.layer_norm_epsilon
        self.n_head, self.head_dim = config.n_head, config.head_dim
        self.ln_1 = nn.LayerNorm(c, eps=eps)
        self.c_attn = Linear(c, 3 * c)
        self.c_proj = Linear(c, c)
        self.ln_2 = nn.LayerNorm(c, eps=eps)
        self.c_fc = Linear(c, 4 * c)
        self.mlp_proj = Linear(4 * c, c)

    def forward(self, x: Tensor, layer_k: Tensor, layer_v: Tensor, slots: Tensor, positions: Tensor,
                plan: AttentionPlan) -> Tensor:
        # x: [T, C]; layer_k/v: [S, H, P, D] views of this layer's cache
        T = x.shape[0]
        q, k, v = self.c_attn(self.ln_1(x)).view(T, 3, self.n_head, self.head_dim).unbind(1)  # [T, H, D]
        layer_k[slots, :, positions] = k
        layer_v[slots, :, positions] = v
        y = torch.empty_like(q)
        if plan.num_decode:
            y[: plan.num_decode] = attend_decodes(q[: plan.num_decode], layer_k, layer_v, plan)
        for p in plan.prefills:
            y[p.start : p.start + p.length] = attend_prefill(q[p.start : p.start + p.length],
                                                             layer_k[p.slot], layer_v[p.slot], p)
        x = x + self.c_proj(y.view(T, -1))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


def attend_decodes(q: Tensor, layer_k: Tensor, layer_v: Tensor, plan: AttentionPlan) -> Tensor:
    """One query per decoding sequence against its cached keys. q: [B, H, D] -> [B, H, D].

    The keys are read in place from the slot range (a view, no gather copy); rows of the range
    that hold no decode get a dummy query and are dropped afterwards.
    """
    mask = plan.decode_mask  # [R, 1, 1, N]
    R, N = mask.shape[0], mask.shape[-1]
    k = layer_k[plan.slot_lo : plan.slot_lo + R, :, :N]  # [R, H, N, D]
    v = layer_v[plan.slot_lo : plan.slot_lo + R, :, :N]
    rows = plan.decode_rows
    qr = q if rows is None else q.new_zeros(R, *q.shape[1:]).index_copy_(0, rows, q)  # [R, H, D]
    y = F.scaled_dot_product_attention(qr.unsqueeze(2), k, v, attn_mask=mask).squeeze(2)  # [R, H, D]
    return y if rows is None else y.index_select(0, rows)


def attend_prefill(q: Tensor, slot_k: Tensor, slot_v: Tensor, chunk: Prefill) -> Tensor:
    """A chunk of one sequence's prompt, causal, over the keys cached before it and its own.
    q: [n, H, D]; slot_k/v: [H, P, D] -> [n, H, D]."""
    end = chunk.first_pos + chunk.length
    q = q.transpose(0, 1).unsqueeze(0)  # [1, H, n, D]
    k, v = slot_k[None, :, :end], slot_v[None, :, :end]  # [1, H, end, D]
    if chunk.mask is None:  # the chunk starts the prompt: plain causal attention
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=chunk.mask)
    return y[0].transpose(0, 1)


class GPT2(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as in GPT-2

    def pack_for_cpu(self) -> bool:
        """Reorder every linear weight for oneDNN; False (and nothing changed) where it is not
        available."""
        linears = [m for m in self.modules() if isinstance(m, Linear)]
        try:
            for linear in linears:
                linear.pack()
        except (RuntimeError, AttributeError):
            for linear in linears:
                linear.packed = None
            return False
        return True

    def forward(self, input_ids: Tensor, positions: Tensor, slots: Tensor, plan: AttentionPlan,
                cache: KVCache, logits_index: Tensor | None = None, capture: Capture | None = None) -> Tensor:
        """input_ids, positions, slots: [T]. Writes the tokens' keys and values into the cache
        and returns the final hidden states [K, C] of the tokens in logits_index (all if None);
        `logits()` turns them into vocabulary logits. `capture` keeps rows of the residual stream."""
        x = self.wte(input_ids) + self.wpe(positions)  # [T, C]
        for i, block in enumerate(self.h):
            if capture is not None and i in capture.rows:
                capture.residuals[i] = x.index_select(0, capture.rows[i])
            x = block(x, cache.k[i], cache.v[i], slots, positions, plan)
        if logits_index is not None:
            x = x.index_select(0, logits_index)
        return self.ln_f(x)

    def logits(self, hidden: Tensor) -> Tensor:
        """[K, C] final hidden states -> [K, V] float32 logits."""
        return self.lm_head(hidden).float()
