"""The Mamba selective scan, on any device, in bounded memory.

For every channel ``d`` and state index ``n`` (shapes as in ``mamba_ssm``)::

    h[t] = exp(delta[t] * A) * h[t-1] + delta[t] * B[t] * u[t]      h[-1] = 0
    y[t] = sum_n C[t] * h[t] + D * u[t]

u, delta: ``[batch, d, L]``; A: ``[d, n]``; B, C: ``[batch, n, L]``; D: ``[d]``; y: ``[batch, d, L]``.

``selective_scan_sequential`` is the plain loop (the reference). ``selective_scan_chunked``
splits the sequence into chunks, runs each chunk as a log-depth parallel prefix scan, carries
the state ``[batch, d, n]`` from chunk to chunk and, when gradients are needed, keeps only the state entering each chunk and
recomputes the chunk in the backward pass (gradient checkpointing per chunk, in a custom
autograd function), so neither pass ever holds more than one chunk of
``[batch, d, chunk, n]`` states. ``selective_scan`` uses the CUDA kernel of
``mamba_ssm`` for CUDA tensors when that package is installed, and the chunked scan otherwise.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

try:
    from mamba_ssm.ops.selective_scan_interface import (
        selective_scan_fn as _cuda_selective_scan,
    )
except (ImportError, OSError):
    _cuda_selective_scan = None


def selective_scan_sequential(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor
) -> torch.Tensor:
    """Reference scan: one time step at a time."""
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        dt = delta[:, :, t, None]
        h = torch.exp(dt * A) * h + dt * B[:, None, :, t] * u[:, :, t, None]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=2) if ys else u.new_zeros(u.shape)
    return y + D[:, None] * u


def _shift(x: torch.Tensor, k: int, fill: float) -> torch.Tensor:
    """``x`` moved ``k`` steps later along dim 2, the first ``k`` entries set to ``fill``."""
    return F.pad(x[:, :, : x.shape[2] - k], (0, 0, k, 0), value=fill)


def _scan_chunk(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, h0: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk from state ``h0``: returns ``(y without the D term, last state)``.

    Hillis-Steele inclusive scan of the affine maps ``h -> a*h + x``: every intermediate
    factor is a product of decays in (0, 1], so nothing overflows.
    """
    a = torch.exp(delta.unsqueeze(-1) * A[:, None, :])                    # [b, d, T, n]
    x = (delta * u).unsqueeze(-1) * B.transpose(1, 2).unsqueeze(1)        # [b, d, T, n]
    k = 1
    while k < u.shape[2]:
        x = a * _shift(x, k, 0.0) + x
        a = a * _shift(a, k, 1.0)
        k *= 2
    h = x + a * h0.unsqueeze(2)
    y = (h * C.transpose(1, 2).unsqueeze(1)).sum(-1)
    return y, h[:, :, -1].clone()  # a copy: a view would keep the whole chunk's states alive


def _run_chunks(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, chunk: int,
    states: torch.Tensor | None = None,
) -> torch.Tensor:
    """All chunks in order, into one preallocated output; ``states[i]`` receives the state
    entering chunk ``i`` when given."""
    y = u.new_empty(u.shape)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    for i, start in enumerate(range(0, u.shape[2], chunk)):
        part = slice(start, start + chunk)
        if states is not None:
            states[i] = h
        y[:, :, part], h = _scan_chunk(u[:, :, part], delta[:, :, part], A, B[:, :, part], C[:, :, part], h)
    return y


class _ChunkedScan(torch.autograd.Function):
    """The chunked scan with per-chunk recomputation in the backward pass.

    The forward pass keeps only the inputs and the state entering each chunk; the backward
    pass walks the chunks in reverse, recomputes one chunk with autograd, and hands the
    gradient of its entering state on to the chunk before. Every long-lived buffer is
    allocated once, so the per-chunk temporaries are reused rather than fragmenting memory.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, chunk):
        count = -(-u.shape[2] // chunk)
        states = u.new_empty(count, u.shape[0], u.shape[1], A.shape[1])
        y = _run_chunks(u, delta, A, B, C, chunk, states)
        ctx.save_for_backward(u, delta, A, B, C, states)
        ctx.chunk = chunk
        return y

    @staticmethod
    def backward(ctx, grad_y):
        u, delta, A, B, C, states = ctx.saved_tensors
        need = ctx.needs_input_grad[:5]
        grads = [torch.zeros_like(t) if wanted else None for t, wanted in zip((u, delta, A, B, C), need)]
        grad_h = None
        for i in reversed(range(states.shape[0])):
            part = slice(i * ctx.chunk, (i + 1) * ctx.chunk)
            inputs = [u[:, :, part], delta[:, :, part], A, B[:, :, part], C[:, :, part], states[i]]
            inputs = [t.detach().requires_grad_(k == 5 or need[k]) for k, t in enumerate(inputs)]
            with torch.enable_grad():
                y, h = _scan_chunk(*inputs)
            outputs, seeds = [y], [grad_y[:, :, part]]
            if grad_h is not None:
                outputs.append(h)
                seeds.append(grad_h)
            wanted = [k for k in range(6) if inputs[k].requires_grad]
            found = dict(zip(wanted, torch.autograd.grad(outputs, [inputs[k] for k in wanted], seeds, allow_unused=True)))
            for k in range(5):
                if grads[k] is not None and found.get(k) is not None:
                    if k == 2:
                        grads[k] += found[k]
                    else:
                        grads[k][:, :, part] = found[k]
            grad_h = found[5]
        return (*grads, None)


def selective_scan_chunked(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    chunk: int = 64,
) -> torch.Tensor:
    """The same result as ``selective_scan_sequential`` in O(chunk) working memory."""
    if chunk < 1:
        raise ValueError(f"chunk must be a positive number of time steps, got {chunk}.")
    if u.shape[2] == 0:
        return u.clone()
    if torch.is_grad_enabled() and any(t.requires_grad for t in (u, delta, A, B, C)):
        y = _ChunkedScan.apply(u, delta, A, B, C, chunk)
    else:
        y = _run_chunks(u, delta, A, B, C, chunk)
    return y + D[:, None] * u


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    chunk: int = 64,
) -> torch.Tensor:
    """The selective scan: the ``mamba_ssm`` CUDA kernel where available, else chunked."""
    if _cuda_selective_scan is not None and u.is_cuda:
        return _cuda_selective_scan(
            u.contiguous(), delta.contiguous(), A.contiguous(), B.contiguous(), C.contiguous(), D.float()
        )
    return selective_scan_chunked(u, delta, A, B, C, D, chunk=chunk)
