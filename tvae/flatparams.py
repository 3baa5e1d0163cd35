"""Model parameters as views into one contiguous buffer, split into freezable segments.

On a 2-core CPU the per-tensor overhead of gradient clipping, zeroing and AdamW over ~40 small
tensors costs as much as the matmuls. With every parameter (and gradient) a view into one flat
buffer, the optimizer sees one tensor per segment, zeroing is one op and the global gradient
norm is one reduction. A segment (an encoder trunk) is frozen by stopping its gradients and
hiding its grad from the optimizer, which then skips it entirely (no moments, no decay).

Weights listed in `transposed` are stored column-major (a (out, in) weight laid out as (in, out)).
For a first layer with 9 inputs this makes autograd compute the weight gradient as x^T @ g, a
wide GEMM, instead of g^T @ x with 9 output columns, which MKL runs about 5x slower.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn


class FlatParams:
    """Re-home the parameters of `segments` (lists of modules) into contiguous storage."""

    def __init__(
        self, segments: Sequence[Sequence[nn.Module]], transposed: Iterable[torch.Tensor] = ()
    ) -> None:
        col_major = {id(p) for p in transposed}
        groups = [[p for m in seg for p in m.parameters()] for seg in segments]
        flat = [p for g in groups for p in g]
        if len({id(p) for p in flat}) != len(flat):
            raise ValueError("a parameter appears in more than one segment")
        ref = flat[0]
        total = sum(p.numel() for p in flat)
        self.data = torch.empty(total, dtype=ref.dtype, device=ref.device)
        self.grad = torch.zeros_like(self.data)
        self.segments: list[nn.Parameter] = []
        self.model_params = groups
        offset = 0
        for group in groups:
            start = offset
            for p in group:
                n = p.numel()
                data, grad = self.data[offset : offset + n], self.grad[offset : offset + n]
                if id(p) in col_major and p.dim() == 2:
                    rows, cols = p.shape
                    data, grad = data.view(cols, rows).t(), grad.view(cols, rows).t()
                else:
                    data, grad = data.view_as(p), grad.view_as(p)
                data.copy_(p.data)
                p.data = data
                p.grad = grad
                offset += n
            seg = nn.Parameter(self.data[start:offset])
            seg.grad = self.grad[start:offset]
            self.segments.append(seg)

    def grad_span(self, first: int, last: int) -> torch.Tensor:
        """The flat gradient covering segments first..last (inclusive), one contiguous view."""
        return self.grad[self._start(first) : self._start(last) + self.segments[last].numel()]

    def _start(self, index: int) -> int:
        seg = self.segments[index]
        return (seg.data.data_ptr() - self.data.data_ptr()) // self.data.element_size()

    def zero_grad(self) -> None:
        self.grad.zero_()

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Scale all gradients to total norm <= max_norm; return the pre-clip norm (no sync)."""
        norm = torch.linalg.vector_norm(self.grad)
        self.grad.mul_((max_norm / (norm + 1e-6)).clamp(max=1.0))
        return norm

    def set_frozen(self, index: int, frozen: bool) -> None:
        """Freeze/unfreeze segment `index`: no gradient flows to it and the optimizer skips it."""
        for p in self.model_params[index]:
            p.requires_grad_(not frozen)
        seg = self.segments[index]
        start = self._start(index)
        seg.grad = None if frozen else self.grad[start : start + seg.numel()]
