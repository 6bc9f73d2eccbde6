"""Looking inside GPT-2 (torch only): the attention weights of chosen positions, recomputed from the
keys in the KV cache, and the logit lens, each layer's residual stream read through the final layer
norm and the unembedding (nostalgebraist, 2020). Both equal what transformers reports with
output_attentions / output_hidden_states (tests/unit/test_lens.py).

Shapes: R rows (positions of one sequence), L layers, H heads, D head_dim, C n_embd, P key
positions, V vocabulary, k top entries.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from app.model.gpt2 import Block

# rows per lm_head call. Each call reads the whole [V, C] unembedding: at 32 rows that read bounds it
# (GPT-2 small: 1.43 s for a 256-token lens, 1.14 s at 128 rows); a [128, V] float32 block (26 MB)
# stays below glibc's largest mmap threshold (32 MiB), so it is not page-faulted in afresh each time
LENS_ROWS = 128


def future(positions: Tensor, num_keys: int) -> Tensor:
    """[R, 1, P] True where key position > the row's position: what a causal query never sees."""
    return (torch.arange(num_keys, device=positions.device) > positions[:, None]).unsqueeze(1)


def attention_weights(block: Block, stream: Tensor, keys: Tensor, unseen: Tensor) -> Tensor:
    """The block's attention weights for queries of one sequence over its cached keys.
    stream [R, C]: the residual stream entering the block at the queries' positions; keys [H, P, D]
    with P > every position; unseen [R, 1, P]: `future` of the positions -> [R, H, P] float32, 0
    after each row's position (causal)."""
    H, D = block.n_head, block.head_dim
    C = H * D
    q = F.linear(block.ln_1(stream), block.c_attn.weight[:C], block.c_attn.bias[:C])  # the query third of c_attn
    scores = torch.einsum("rhd,hpd->rhp", q.view(-1, H, D).float(), keys.float()) * D**-0.5
    return scores.masked_fill_(unseen, float("-inf")).softmax(-1)


def top_attention(weights: Tensor, unseen: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """weights [R, H, P] (overwritten) -> for each head and then the heads' mean, the min(k, P) key
    positions weighted most and their weights, largest first: two [R, H + 1, min(k, P)] tensors. A
    row's entries past its own position + 1 are padding (the caller cuts them)."""
    k = min(k, weights.shape[-1])
    mean = weights.mean(1, keepdim=True)  # [R, 1, P]
    tops = [w.masked_fill_(unseen, -1.0).topk(k, -1) for w in (weights, mean)]  # padding sorts last, even
    return torch.cat([t.indices for t in tops], 1), torch.cat([t.values for t in tops], 1)  # behind a 0 weight


def logit_lens(ln_f: torch.nn.LayerNorm, logits: Callable[[Tensor], Tensor], streams: Tensor, final: Tensor,
               k: int, next_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Next-token predictions read at every layer. streams [L, R, C]: the residual stream entering
    each block (layer 0: the embeddings); final [R, C]: the final hidden state (layer L, already
    normalised); `logits` maps [n, C] to [n, V] float32; next_ids [R]: a token whose probability to
    report at each layer (any id where there is none). Returns the top k ids [L + 1, R, k], their
    probabilities [L + 1, R, k] and the probabilities of next_ids [L + 1, R]."""
    layers, rows = streams.shape[0] + 1, final.shape[0]
    normed = torch.cat([ln_f(streams), final[None]]).flatten(0, 1)  # [(L + 1) R, C]
    targets = next_ids.repeat(layers)[:, None]  # [(L + 1) R, 1]
    ids, probs, nexts = [], [], []
    for s in range(0, normed.shape[0], LENS_ROWS):
        block = logits(normed[s : s + LENS_ROWS])  # [rows, V]
        norm = block.logsumexp(-1, keepdim=True)  # no [rows, V] log-softmax written: only k + 1 entries are read
        top = block.topk(k, -1)
        ids.append(top.indices)
        probs.append((top.values - norm).exp())
        nexts.append((block.gather(1, targets[s : s + LENS_ROWS]) - norm).exp())
    shape = (layers, rows, k)
    return torch.cat(ids).view(shape), torch.cat(probs).view(shape), torch.cat(nexts).view(layers, rows)
