"""Mamba's selective scan (S6) in pure PyTorch: a sequential reference and a fast, memory-lean chunked scan.

Notation: ``b`` batch, ``L`` sequence length, ``d`` channels (``d_inner`` in a Mamba block), ``n`` state size
(``d_state``). Layout is channels-last, ``(b, L, d)``, as in ``mambapy`` (``mamba_ssm``'s CUDA kernel takes
``(b, d, L)``).

For every channel ``d`` and state ``n`` the scan runs the linear recurrence

    h_t = exp(dt_t * A) * h_{t-1} + dt_t * u_t * B_t          h_{-1} = 0
    y_t = <C_t, h_t> + D * u_t

with ``u, dt: (b, L, d)``, ``A: (d, n)`` (negative), ``B, C: (b, L, n)`` and ``D: (d,)``. ``dt`` is used as
given (apply ``softplus(dt + bias)`` before calling, as :class:`~medmoe.nn.mamba.Mamba` does).

Two methods:

* ``"sequential"`` — a plain loop over time with ordinary autograd. Slow, obviously correct; for tests.
* ``"chunked"`` (default) — a custom :class:`torch.autograd.Function` that never materialises the
  ``(b, L, d, n)`` hidden states. The sequence is cut into chunks of ``chunk_size`` steps, and the chunks
  are processed in blocks (``chunk_size * b * chunks_per_block * d * n <= block_elements``), block after
  block, each starting from the exact state the previous block ended in. Inside a block, ``exp(dt A)`` and
  the inputs ``dt u B`` are formed once for all its steps (two buffers); a loop over the ``chunk_size``
  steps runs *every chunk of the block at once* from a zero state (one vectorised op per step), a loop over
  the block's chunks carries the true chunk-start states (``h_end = local_end + exp(A sum dt) h_start``),
  and a second pass over the steps, from those states, gives all the states of the block, which are
  contracted with ``C`` right away. Only the chunk-start states ``(b, L / chunk_size, d, n)`` are saved for
  backward (besides the inputs). Backward walks the blocks in reverse and does the same for the adjoint
  ``g_t = dL/dh_t = dy_t C_t + exp(dt_{t+1} A) g_{t+1}`` (local reverse pass, carry across chunks, true
  pass), rebuilds the block's states from the saved chunk-start states, and reduces the gradients of
  ``u, dt, A, B, C`` with batched mat-vecs. Decays are multiplied step by step (no ``exp`` of a growing
  positive number, no division by a decay), so the chunked scan is as stable as the sequential one for any
  ``dt`` and any negative ``A``. ``exp`` is computed as ``exp2(x log2 e)`` (cheaper than ``exp`` on CPU, a few ulp).
  Peak extra memory is a few ``block_elements`` buffers (64 MB each in fp32 by default) plus the saved
  chunk-start states, independent of how long the sequence is beyond that.

  On CUDA, where the cost is the number of small dependent launches rather than the work, the carry across
  chunks is a log-depth (Hillis-Steele) scan of the chunks' affine maps instead of a loop over chunks, and
  blocks are 4x larger (``CUDA_BLOCK_ELEMENTS``, 256 MB fp32 per buffer).

  The per-step loops launch many small ops; on CPU they run on one intra-op thread (the bulk ops of a
  block use all of them), because a thread pool that has to wait for a preempted worker at every small op
  loses more than it gains on a shared machine.

  Its backward is not differentiable itself: with ``create_graph=True`` (higher-order gradients) the
  gradients come from the ``"sequential"`` loop on the saved inputs instead, at that loop's speed and
  ``(b, L, d, n)`` memory (:mod:`medmoe.nn.higher_order`).

``(b, L, d, n)`` at ``L = 32768, d = 192, n = 16`` is 400 MB in fp32; ``mambapy``'s ``pscan`` keeps several
such tensors (``exp(dt A)``, ``dt B u``, the states, their gradients; 3.3 GB peak for forward+backward).
``benchmarks/bench_mamba_scan.py`` compares the two.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from .higher_order import higher_order_requested, reference_gradients

__all__ = ["SCAN_METHODS", "selective_scan", "selective_scan_sequential"]

SCAN_METHODS = ("chunked", "sequential")
DEFAULT_CHUNK_SIZE = 32
_LOG2E = 1.4426950408889634
#: State values (chunk_size * b * chunks * d * n) per work buffer: 64 MB fp32 on the CPU (cache-friendly
#: blocks), 256 MB on CUDA (fewer blocks, so fewer of the small sequential launches that bound a GPU).
DEFAULT_BLOCK_ELEMENTS = 1 << 24
CUDA_BLOCK_ELEMENTS = 1 << 26


def _check_inputs(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None) -> None:
    if u.ndim != 3:
        raise ValueError(f"selective_scan: u must be (b, L, d), got shape {tuple(u.shape)}")
    b, L, d = u.shape
    if delta.shape != u.shape:
        raise ValueError(
            f"selective_scan: delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}"
        )
    if A.ndim != 2 or A.shape[0] != d:
        raise ValueError(f"selective_scan: A must be (d, n) = ({d}, n), got {tuple(A.shape)}")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.shape != (b, L, n):
            raise ValueError(f"selective_scan: {name} must be (b, L, n) = {(b, L, n)}, got {tuple(t.shape)}")
    if D is not None and D.shape != (d,):
        raise ValueError(f"selective_scan: D must be (d,) = ({d},), got {tuple(D.shape)}")
    if L == 0:
        raise ValueError("selective_scan: the sequence is empty (L = 0)")


def selective_scan_sequential(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None
) -> Tensor:
    """Reference scan: one recurrence step per time step, ordinary autograd. Shapes as :func:`selective_scan`."""
    _check_inputs(u, delta, A, B, C, D)
    dtype = u.dtype
    u, delta, A, B, C = (
        t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in (u, delta, A, B, C)
    )
    h = u.new_zeros((u.shape[0], u.shape[2], A.shape[1]))  # (b, d, n)
    ys = []
    for t in range(u.shape[1]):
        decay = torch.exp(delta[:, t, :, None] * A)  # (b, d, n)
        h = decay * h + (delta[:, t] * u[:, t])[:, :, None] * B[:, t, None, :]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, t]))
    y = torch.stack(ys, dim=1)
    if D is not None:
        y = y + u * D
    return y.to(dtype)


def _block(x: Tensor, c0: int, c1: int) -> Tensor:
    """Chunks ``c0:c1`` of ``x: (b, c, T, k)`` as a contiguous ``(T, b * (c1 - c0), k)`` (one row block per step)."""
    b, _, T, k = x.shape
    return x[:, c0:c1].permute(2, 0, 1, 3).reshape(T, b * (c1 - c0), k).contiguous()


def _unblock(x: Tensor, b: int) -> Tensor:
    """Inverse of :func:`_block`: ``(T, b * k, f)`` -> ``(b, k, T, f)`` (a view)."""
    T, bk, f = x.shape
    return x.view(T, b, bk // b, f).permute(1, 2, 0, 3)


def _chunks_per_block(b: int, c: int, T: int, d: int, n: int, block_elements: int) -> int:
    """Chunks of ``T`` steps processed at once: at most ``block_elements`` states ``(T, b * k, d, n)``."""
    return max(1, min(c, block_elements // (T * b * d * n)))


def _parallel_carry(device: torch.device) -> bool:
    """Carry the chunk states with a log-depth scan (CUDA: few launches matter) or a loop (CPU: less work)."""
    return device.type == "cuda" or _FORCE_PARALLEL_CARRY


_FORCE_PARALLEL_CARRY = False  # tests set it to run the CUDA carry on the CPU


def _carry(local: Tensor, totals: Tensor, h0: Tensor, out: Tensor) -> Tensor:
    """Chunk-start states of ``s_0 = h0``, ``s_j = local_{j-1} + totals_{j-1} s_{j-1}`` into ``out``.

    ``local, totals, out: (b, k, d, n)``, ``h0: (b, d, n)``; returns the state after the last chunk,
    ``local_{k-1} + totals_{k-1} s_{k-1}``. On CUDA the affine maps ``x -> totals_j x + local_j`` are
    composed by a Hillis-Steele scan (``log2 k`` rounds of three ops instead of ``k`` dependent ops).
    """
    k = local.shape[1]
    if not _parallel_carry(local.device):
        out[:, 0] = h0
        with _serial(local.device):
            for j in range(1, k):
                torch.addcmul(local[:, j - 1], totals[:, j - 1], out[:, j - 1], out=out[:, j])
        return torch.addcmul(local[:, k - 1], totals[:, k - 1], out[:, k - 1])
    gain, shift = totals.clone(), local.clone()  # prefix maps: end state of chunk j = gain_j h0 + shift_j
    step = 1
    while step < k:
        shift[:, step:] = torch.addcmul(shift[:, step:], gain[:, step:], shift[:, :-step])
        gain[:, step:] = gain[:, step:] * gain[:, :-step]
        step *= 2
    ends = torch.addcmul(shift, gain, h0[:, None])
    out[:, 0] = h0
    out[:, 1:] = ends[:, :-1]
    return ends[:, k - 1]


def _chunked_scan_forward(
    u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, T: int, block_elements: int
) -> tuple[Tensor, Tensor]:
    """The chunked scan on padded inputs ``(b, c * T, ...)``: ``y (b, c * T, d)`` and the chunk-start states
    ``(b, c, d, n)`` that :func:`_chunked_scan_backward` rebuilds every state from."""
    b, padded, d = u.shape
    n = A.shape[1]
    c = padded // T
    kc = _chunks_per_block(b, c, T, d, n, block_elements)
    dt4, B4, C4 = dt.view(b, c, T, d), B.view(b, c, T, n), C.view(b, c, T, n)
    dtu4 = (dt * u).view(b, c, T, d)
    A2 = A * _LOG2E  # exp(x) = exp2(x log2 e): exp2 is cheaper than exp on CPU (docs/performance-notes.md)
    y = u.new_empty((b, c, T, d))
    h_starts = u.new_empty((b, c, d, n))
    # workspaces, allocated once and reused by every block (fresh multi-MB tensors cost page faults)
    work = _Workspace(u, T * b * kc * d * n, 2)
    ping = _Workspace(u, b * kc * d * n, 2)
    h = u.new_zeros((b, d, n))  # state entering the current block
    for c0 in range(0, c, kc):
        c1 = min(c, c0 + kc)
        k = c1 - c0
        bk = b * k
        dt_b, dtu_b, B_b, C_b = (_block(x, c0, c1) for x in (dt4, dtu4, B4, C4))
        decays = torch.mul(dt_b[..., None], A2, out=work.get(0, T, bk, d, n)).exp2_()  # exp(dt A)
        states = torch.mul(dtu_b[..., None], B_b[:, :, None, :], out=work.get(1, T, bk, d, n))  # dt u B
        local = states[0]  # pass 1: each chunk from a zero state -> its local end state
        with _serial(u.device):
            for t in range(1, T):
                local = torch.addcmul(states[t], decays[t], local, out=ping.get(t % 2, bk, d, n))
        local = local.view(b, k, d, n)
        totals = torch.exp(dt_b.sum(0)[..., None] * A).view(b, k, d, n)  # decay over a whole chunk
        starts = h_starts[:, c0:c1]
        h = _carry(local, totals, h, out=starts)
        prev = starts.reshape(bk, d, n)
        with _serial(u.device):
            for t in range(T):  # pass 2, in place: states[t] = inputs[t] + decays[t] * states[t - 1]
                prev = states[t].addcmul_(decays[t], prev)
        y_b = torch.bmm(C_b.view(-1, 1, n), states.view(-1, d, n).transpose(1, 2))  # (T * bk, 1, d)
        y[:, c0:c1] = _unblock(y_b.view(T, bk, d), b)
    return y.view(b, c * T, d), h_starts


def _chunked_scan_backward(
    dy: Tensor, u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, h_starts: Tensor, T: int, block_elements: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of :func:`_chunked_scan_forward`'s ``y`` (``dy (b, c * T, d)``, padding included) for
    ``u, dt, A, B, C``."""
    b, padded, d = u.shape
    n = A.shape[1]
    c = padded // T
    kc = _chunks_per_block(b, c, T, d, n, block_elements)
    dy = dy.to(u.dtype)
    u4, dt4, dy4 = u.view(b, c, T, d), dt.view(b, c, T, d), dy.reshape(b, c, T, d)
    B4, C4 = B.view(b, c, T, n), C.view(b, c, T, n)
    du, ddt = torch.empty_like(u4), torch.empty_like(dt4)
    dB, dC = torch.empty_like(B4), torch.empty_like(C4)
    dA = torch.zeros_like(A)
    A2 = A * _LOG2E
    work = _Workspace(u, T * b * kc * d * n, 3)
    ping = _Workspace(u, b * kc * d * n, 2)
    msg = u.new_zeros((b, d, n))  # exp(dt A) g at the first step after the current block
    for c0 in reversed(range(0, c, kc)):
        c1 = min(c, c0 + kc)
        k = c1 - c0
        bk = b * k
        u_b, dt_b, dy_b, B_b, C_b = (_block(x, c0, c1) for x in (u4, dt4, dy4, B4, C4))
        dtu_b = dt_b * u_b
        decays = torch.mul(dt_b[..., None], A2, out=work.get(0, T, bk, d, n)).exp2_()
        grads = torch.mul(dy_b[..., None], C_b[:, :, None, :], out=work.get(1, T, bk, d, n))  # dy C -> g
        # local adjoint pass from a zero terminal: what each chunk sends to the end of the previous one
        sent = torch.mul(decays[T - 1], grads[T - 1], out=ping.get(1, bk, d, n))
        with _serial(u.device):
            for t in range(T - 2, -1, -1):
                sent = torch.add(grads[t], sent, out=ping.get(t % 2, bk, d, n)).mul_(decays[t])
        sent = sent.view(b, k, d, n)
        totals = torch.exp(dt_b.sum(0)[..., None] * A).view(b, k, d, n)
        incoming = u.new_empty((b, k, d, n))  # message into the last step of each chunk
        if _parallel_carry(u.device):  # the forward carry, run from the last chunk back
            msg = _carry(sent.flip(1), totals.flip(1), msg, out=incoming)
            incoming = incoming.flip(1)
        else:
            incoming[:, k - 1] = msg
            with _serial(u.device):
                for j in range(k - 1, 0, -1):
                    torch.addcmul(sent[:, j], totals[:, j], incoming[:, j], out=incoming[:, j - 1])
            msg = torch.addcmul(sent[:, 0], totals[:, 0], incoming[:, 0])
        # states of the block, rebuilt from the saved chunk-start states
        starts = h_starts[:, c0:c1].reshape(bk, d, n)
        states = torch.mul(dtu_b[..., None], B_b[:, :, None, :], out=work.get(2, T, bk, d, n))
        prev = starts
        with _serial(u.device):
            for t in range(T):
                prev = states[t].addcmul_(decays[t], prev)
        dC_b = torch.matmul(dy_b.view(-1, 1, d), states.view(-1, d, n))  # (T * bk, 1, n)
        # true adjoint, in place: grads[t] = dy_t C_t + w_{t+1};  decays[t] -> w_t = exp(dt_t A) g_t
        w = incoming.view(bk, d, n)
        with _serial(u.device):
            for t in range(T - 1, -1, -1):
                grads[t].add_(w)
                w = decays[t].mul_(grads[t])
        dtu_grad = torch.bmm(B_b.view(-1, 1, n), grads.view(-1, d, n).transpose(1, 2)).view(T, bk, d)
        dB_b = torch.matmul(dtu_b.view(-1, 1, d), grads.view(-1, d, n))  # (T * bk, 1, n)
        # q_t = w_t * h_{t-1} = dL/d(dt_t A)
        q = decays
        q[1:].mul_(states[:-1])
        q[0].mul_(starts)
        ddt_b = torch.mul(q, A, out=grads).sum(-1).addcmul_(dtu_grad, u_b)
        q.mul_(dt_b[..., None])  # sum over steps and chunks as a mat-vec (faster than .sum(0))
        dA += torch.mm(q.new_ones((1, T * bk)), q.view(T * bk, d * n)).view(d, n)
        du[:, c0:c1] = _unblock(dtu_grad.mul_(dt_b), b)
        ddt[:, c0:c1] = _unblock(ddt_b, b)
        dB[:, c0:c1] = _unblock(dB_b.view(T, bk, n), b)
        dC[:, c0:c1] = _unblock(dC_b.view(T, bk, n), b)
    du, ddt, dB, dC = (x.view(b, c * T, -1) for x in (du, ddt, dB, dC))
    return du, ddt, dA, dB, dC


class _ChunkedSelectiveScan(torch.autograd.Function):
    """``y_t = <C_t, h_t>`` (no ``D`` term) with chunk-wise recomputation; see the module docstring.

    ``u, dt, B, C`` come padded to ``c`` chunks of ``T`` steps by :func:`selective_scan` (tracked, so that the
    tensors saved for backward are this Function's own inputs); the output is cropped to the first ``L``.
    Sizes: ``k`` chunks per block (the last block may have fewer), ``bk = b * k``.
    Work tensors of a block are ``(T, bk, ...)``: one contiguous row block per step. Forward saves
    ``u, dt, A, B, C`` and the chunk-start states ``(b, c, d, n)``. Under ``create_graph=True`` the gradients
    are those of :func:`selective_scan_sequential` (:mod:`medmoe.nn.higher_order`), differentiable again.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, L: int, T: int, block_elements: int
    ) -> Tensor:
        y, h_starts = _chunked_scan_forward(u, dt, A, B, C, T, block_elements)
        ctx.save_for_backward(u, dt, A, B, C, h_starts)
        ctx.sizes = (L, T, block_elements)
        return y[:, :L]

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        u, dt, A, B, C, h_starts = ctx.saved_tensors
        L, T, block_elements = ctx.sizes
        if higher_order_requested():  # create_graph=True: the sequential loop's gradients, differentiable
            grads = reference_gradients(_scan_reference, (u, dt, A, B, C, L), ctx.needs_input_grad[:6], dy)
            return (*grads[:5], None, None, None)
        if u.shape[1] > L:
            dy = torch.nn.functional.pad(dy, (0, 0, 0, u.shape[1] - L))
        # _pad_steps' backward crops the padded gradients
        return (*_chunked_scan_backward(dy, u, dt, A, B, C, h_starts, T, block_elements), None, None, None)


# The same scan as one opaque operator for torch.compile: dynamo cannot trace the Function's per-step loops
# (they switch thread counts and would unroll into thousands of nodes), so the graph used to split around every
# scan. As a custom op it stays one node of the graph, with the hand-written backward as its gradient.
@torch.library.custom_op("medmoe::chunked_selective_scan", mutates_args=())
def _chunked_scan_op(
    u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, T: int, block_elements: int
) -> tuple[Tensor, Tensor]:
    return _chunked_scan_forward(u, dt, A, B, C, T, block_elements)


@_chunked_scan_op.register_fake
def _(u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, T: int, block_elements: int) -> tuple[Tensor, Tensor]:
    b, padded, d = u.shape
    return u.new_empty((b, padded, d)), u.new_empty((b, padded // T, d, A.shape[1]))


@torch.library.custom_op("medmoe::chunked_selective_scan_backward", mutates_args=())
def _chunked_scan_backward_op(
    dy: Tensor, u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, h_starts: Tensor, T: int, block_elements: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _chunked_scan_backward(dy, u, dt, A, B, C, h_starts, T, block_elements)


@_chunked_scan_backward_op.register_fake
def _(
    dy: Tensor, u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, h_starts: Tensor, T: int, block_elements: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return tuple(torch.empty_like(x) for x in (u, dt, A, B, C))  # type: ignore[return-value]


def _scan_op_setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    u, dt, A, B, C, T, block_elements = inputs
    ctx.save_for_backward(u, dt, A, B, C, output[1])
    ctx.sizes = (T, block_elements)


def _scan_op_backward(ctx: Any, dy: Tensor, _: Tensor | None) -> tuple[Tensor | None, ...]:
    u, dt, A, B, C, h_starts = ctx.saved_tensors
    return (*_chunked_scan_backward_op(dy, u, dt, A, B, C, h_starts, *ctx.sizes), None, None)


_chunked_scan_op.register_autograd(_scan_op_backward, setup_context=_scan_op_setup_context)


def _scan_reference(u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, L: int) -> Tensor:
    """:class:`_ChunkedSelectiveScan`'s maths (padding cropped) as :func:`selective_scan_sequential`."""
    return selective_scan_sequential(u[:, :L], dt[:, :L], A, B[:, :L], C[:, :L])


def _pad_steps(x: Tensor, pad: int) -> Tensor:
    """``x (b, L, k)`` with ``pad`` zero steps appended (a ``cat``: its backward is a view, no copy)."""
    return torch.cat([x, x.new_zeros((x.shape[0], pad, x.shape[2]))], dim=1)


@contextmanager
def _serial(device: torch.device) -> Iterator[None]:
    """Run the enclosed (many small) CPU ops on one intra-op thread; restores the thread count after."""
    old = torch.get_num_threads()
    if device.type != "cpu" or old == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class _Workspace:
    """``count`` flat buffers of ``size`` elements; :meth:`get` views the front of one as a given shape."""

    def __init__(self, like: Tensor, size: int, count: int) -> None:
        self.buffers = [like.new_empty((size,)) for _ in range(count)]

    def get(self, index: int, *shape: int) -> Tensor:
        numel = 1
        for s in shape:
            numel *= s
        return self.buffers[index][:numel].view(shape)


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    *,
    method: str = "chunked",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    block_elements: int | None = None,
) -> Tensor:
    """Selective scan ``y_t = <C_t, h_t> + D u_t`` with ``h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t``.

    Args:
        u: input ``(b, L, d)``.
        delta: step sizes ``dt`` ``(b, L, d)`` (already positive: softplus applied by the caller).
        A: state matrix ``(d, n)`` (negative for a stable scan; Mamba uses ``-exp(A_log)``).
        B: input matrix ``(b, L, n)``.
        C: output matrix ``(b, L, n)``.
        D: optional skip ``(d,)``.
        method: ``"chunked"`` (fast, low memory, custom autograd) or ``"sequential"`` (reference loop).
        chunk_size: steps per chunk for ``"chunked"`` (>= 1). 32-128 is fastest on CPU.
        block_elements: cap on state values (``chunk_size * chunks * d * n``) that backward holds at once;
            ``None``: ``DEFAULT_BLOCK_ELEMENTS`` on the CPU, ``CUDA_BLOCK_ELEMENTS`` on CUDA.

    Returns:
        ``y: (b, L, d)`` in ``u``'s dtype. Half / bfloat16 inputs are computed in float32.
    """
    if method not in SCAN_METHODS:
        raise ValueError(f"selective_scan: method must be one of {SCAN_METHODS}, got {method!r}")
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"selective_scan: chunk_size must be a positive integer, got {chunk_size!r}")
    if block_elements is None:
        block_elements = CUDA_BLOCK_ELEMENTS if u.device.type == "cuda" else DEFAULT_BLOCK_ELEMENTS
    if not isinstance(block_elements, int) or block_elements < 1:
        raise ValueError(f"selective_scan: block_elements must be a positive integer, got {block_elements!r}")
    if method == "sequential":
        return selective_scan_sequential(u, delta, A, B, C, D)
    _check_inputs(u, delta, A, B, C, D)
    dtype = u.dtype
    compute = torch.promote_types(torch.float32, torch.promote_types(u.dtype, A.dtype))
    L = u.shape[1]
    T = min(chunk_size, L)
    pad = (-L) % T
    with torch.autocast(device_type=u.device.type, enabled=False):
        u_c, dt_c, B_c, C_c = (x.to(compute) for x in (u, delta, B, C))
        if pad:  # dt = 0 on padding: decay 1 and no input, so the (cropped) tail never touches real steps
            u_c, dt_c, B_c, C_c = (_pad_steps(x, pad) for x in (u_c, dt_c, B_c, C_c))
        if torch.compiler.is_compiling():
            y = _chunked_scan_op(u_c, dt_c, A.to(compute), B_c, C_c, T, block_elements)[0][:, :L]
        else:  # eager: the Function also gives second-order gradients (create_graph=True)
            y = _ChunkedSelectiveScan.apply(u_c, dt_c, A.to(compute), B_c, C_c, L, T, block_elements)
        if D is not None:
            y = y + u.to(compute) * D.to(compute)
    return y.to(dtype)
