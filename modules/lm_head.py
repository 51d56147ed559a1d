"""The LM head's per-token maths: log-probs of chosen tokens and the entropy of the next-token distribution.

`selective_log_softmax` and `entropy_from_logits` work on logits that already exist (N, T, V). With a 150k
vocabulary those logits, their saved copies for the backward and their gradient are the largest tensors of a
training step, so `chunked_token_logps` goes from the last hidden states instead (as Liger's fused linear
cross-entropy and NeMo-RL's chunked log-probs do): it runs the LM head over `chunk_size` tokens at a time, keeps
only per-token results (log-sum-exp, entropy), and in the backward recomputes each chunk's logits to form their
gradient analytically. At most one chunk's logits (chunk_size, V) exist at any time, in the forward and the backward.

Gradients of z = logits / temperature at one position, with p = softmax(z), y the chosen token:
  log p_y = z_y - lse(z)                     d/dz_k = 1[k = y] - p_k
  H = lse(z) - sum_k p_k z_k                 d/dz_k = -p_k (log p_k + H)
and d/d(logits) = d/dz / temperature; the head's inputs then get grad_hidden = g @ W, grad_W = g^T @ hidden,
grad_b = sum g (each only when that input needs a gradient: with LoRA the head is frozen).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def selective_log_softmax(logits: Tensor, index: Tensor, lse: Tensor | None = None) -> Tensor:
    """log_softmax(logits)[..., index] without materialising the full log-softmax: (N, T, V), (N, T) -> (N, T)."""
    picked = torch.gather(logits, -1, index.unsqueeze(-1)).squeeze(-1)  # (N, T)
    return picked - (torch.logsumexp(logits, dim=-1) if lse is None else lse)


def entropy_from_logits(logits: Tensor, lse: Tensor | None = None) -> Tensor:
    """Entropy of softmax(logits) along the vocabulary: (N, T, V) -> (N, T).

    H = logsumexp(z) - sum(softmax(z) * z); pass `lse` when it is already computed (one V-sized temporary).
    """
    lse = torch.logsumexp(logits, dim=-1) if lse is None else lse
    return lse - (torch.softmax(logits, dim=-1) * logits).sum(-1)


def chunked_token_logps(hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, *,
                        chunk_size: int, temperature: float = 1.0, with_entropy: bool = False,
                        entropy_grad: bool = False, truncation: tuple[float, int] | None = None
                        ) -> tuple[Tensor, ...]:
    """Log-probs (N, T) of `targets` (N, T) under softmax((hidden @ weight.T + bias) / temperature), chunk by chunk.

    hidden (N, T, H): the last hidden states (after the final norm) at the positions that predict `targets`;
    weight (V, H) and bias (V,) or None: the LM head. Logits are computed `chunk_size` flattened tokens at a time,
    in the inputs' dtype as an `nn.Linear` would (autocast's dtype under autocast), then in float32 like
    `logits.float()` (float64 inputs stay float64); the backward recomputes them, so no (N, T, V) tensor is kept.
    Gradients flow to whichever of hidden, weight and bias need them, in their own dtypes (the head's are summed
    over chunks in float32).

    Returns (logps, entropy): `entropy` (N, T) of the full distribution when `with_entropy`, else None; it has a
    gradient only with `entropy_grad` (an entropy bonus), otherwise it is a metric (no graph). With `truncation` =
    (top_p, top_k), returns (logps, entropy, truncated), `truncated` (N, T, no graph) being
    `objectives.tis.truncated_logprobs` of each chunk's tempered logits (vLLM's renormalised log-probs).

    >>> h, w, y = torch.randn(2, 3, 4), torch.randn(10, 4), torch.randint(10, (2, 3))
    >>> logps, entropy = chunked_token_logps(h, w, None, y, chunk_size=4, with_entropy=True)
    >>> torch.allclose(logps, torch.log_softmax(h @ w.T, -1).gather(-1, y[..., None])[..., 0], atol=1e-6)
    True
    >>> entropy.shape, entropy.requires_grad
    (torch.Size([2, 3]), False)
    """
    n, t, h = hidden.shape  # (N, T, H)
    if weight.dim() != 2 or weight.shape[1] != h:
        raise ValueError(f"chunked_token_logps: weight {tuple(weight.shape)} is not (V, {h}) for hidden "
                         f"{tuple(hidden.shape)}; pass the LM head's (vocab, hidden) weight")
    if tuple(targets.shape) != (n, t):
        raise ValueError(f"chunked_token_logps: targets {tuple(targets.shape)} do not match hidden (N, T) = "
                         f"{(n, t)}; give one target token per hidden state")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunked_token_logps: chunk_size={chunk_size!r}; give an integer >= 1 (tokens per chunk)")
    if temperature <= 0:
        raise ValueError(f"chunked_token_logps: temperature={temperature}; it must be > 0")
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else \
        torch.promote_types(hidden.dtype, weight.dtype)
    logps, entropy, truncated = _ChunkedTokenLogps.apply(
        hidden.reshape(n * t, h), weight, bias, targets.reshape(n * t).long(), float(temperature), chunk_size,
        bool(with_entropy), bool(with_entropy and entropy_grad), truncation, dtype)
    out = logps.view(n, t), (entropy.view(n, t) if with_entropy else None)
    return out if truncation is None else (*out, truncated.view(n, t))


def _logits(hidden: Tensor, weight: Tensor, bias: Tensor | None, temperature: float) -> Tensor:
    """Tempered logits (c, V), float32 or wider, of a chunk of hidden states (c, H); inputs in the compute dtype."""
    logits = F.linear(hidden, weight, bias)  # (c, V)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return logits / temperature if temperature != 1.0 else logits


class _ChunkedTokenLogps(torch.autograd.Function):
    """See `chunked_token_logps`; inputs are flattened: hidden (M, H), targets (M,) with M = N * T."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, temperature: float,
                chunk_size: int, with_entropy: bool, entropy_grad: bool, truncation: tuple[float, int] | None,
                dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        from modules.objectives.tis import truncated_logprobs

        m = hidden.shape[0]
        wide = dict(device=hidden.device, dtype=torch.promote_types(dtype, torch.float32))  # float64 stays
        logps = torch.empty(m, **wide)  # (M,)
        lse = torch.empty(m, **wide)  # (M,): all the backward needs to rebuild each chunk's softmax
        entropy = torch.empty(m if with_entropy else 0, **wide)  # (M,) or (0,)
        truncated = torch.empty(m if truncation is not None else 0, **wide)  # (M,) or (0,)
        with torch.autocast(hidden.device.type, enabled=False):
            w, b = weight.to(dtype), None if bias is None else bias.to(dtype)
            for s in range(0, m, chunk_size):
                e = min(s + chunk_size, m)
                z = _logits(hidden[s:e].to(dtype), w, b, temperature)  # (c, V)
                lse[s:e] = torch.logsumexp(z, dim=-1)
                logps[s:e] = selective_log_softmax(z, targets[s:e], lse[s:e])
                if with_entropy:
                    entropy[s:e] = entropy_from_logits(z, lse[s:e])
                if truncation is not None:
                    truncated[s:e] = truncated_logprobs(z, targets[s:e], top_p=truncation[0], top_k=truncation[1])
                del z
        ctx.save_for_backward(hidden, weight, bias, targets, lse, entropy if entropy_grad else None)
        ctx.temperature, ctx.chunk_size, ctx.entropy_grad, ctx.dtype = temperature, chunk_size, entropy_grad, dtype
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None (no (M,) zeros to add)
        ctx.mark_non_differentiable(truncated, *(() if entropy_grad else (entropy,)))  # one call: each replaces
        return logps, entropy, truncated

    @staticmethod
    def backward(ctx, grad_logps: Tensor | None, grad_entropy: Tensor | None, _grad_truncated: Tensor | None):
        hidden, weight, bias, targets, lse, entropy = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        if not ctx.entropy_grad:
            grad_entropy = None
        if (grad_logps is None and grad_entropy is None) or not (need_h or need_w or need_b):
            return (None,) * 10
        dtype, temperature = ctx.dtype, ctx.temperature
        m = hidden.shape[0]
        grad_h = torch.empty_like(hidden) if need_h else None  # (M, H)
        wide = torch.promote_types(dtype, torch.float32)  # the accumulators' dtype: float32, or float64
        grad_w = torch.zeros(weight.shape, device=weight.device, dtype=wide) if need_w else None  # (V, H)
        grad_b = torch.zeros(bias.shape, device=bias.device, dtype=wide) if need_b else None  # (V,)
        with torch.autocast(hidden.device.type, enabled=False):
            w, b = weight.to(dtype), None if bias is None else bias.to(dtype)
            for s in range(0, m, ctx.chunk_size):
                e = min(s + ctx.chunk_size, m)
                h = hidden[s:e].to(dtype)  # (c, H)
                logp = _logits(h, w, b, temperature).sub_(lse[s:e, None])  # (c, V): log p, in place of z
                p = logp.exp()  # (c, V)
                g = None  # (c, V): d loss / d z
                if grad_entropy is not None:  # -p (log p + H) dH
                    g = logp.add_(entropy[s:e, None]).mul_(p).mul_(-grad_entropy[s:e, None])
                if grad_logps is not None:  # (onehot(y) - p) dlogp
                    gl = grad_logps[s:e, None].to(logp.dtype)  # (c, 1)
                    term = p.mul_(-gl).scatter_add_(1, targets[s:e, None], gl)
                    g = term if g is None else g.add_(term)
                del p, logp
                if temperature != 1.0:
                    g = g.div_(temperature)
                g = g.to(dtype)
                if need_h:
                    grad_h[s:e] = g @ w  # (c, H)
                if need_w:
                    grad_w += g.t() @ h  # (V, H)
                if need_b:
                    grad_b += g.sum(0)  # (V,)
        return (grad_h, None if grad_w is None else grad_w.to(weight.dtype),
                None if grad_b is None else grad_b.to(bias.dtype), *(None,) * 7)


__all__ = ["chunked_token_logps", "selective_log_softmax", "entropy_from_logits"]
