"""Adam and SGD as torch.optim computes them, without torch.optim's Optimizer class.

A deployed device starts a fresh process for every message. Building and stepping a
`torch.optim.Optimizer` imports `torch._dynamo` (torch.compile's machinery: about 0.9 CPU-seconds,
a quarter of such a process's work at our model sizes), which training never uses. torch's own
functional kernels (`torch.optim.adam.adam`, `torch.optim.sgd.sgd`: what `Adam.step` and `SGD.step`
call, with the same defaults) do the same arithmetic without it; tests/test_train.py checks that
the parameters after training are bit-identical to torch.optim's.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim.adam import adam
from torch.optim.optimizer import _get_scalar_dtype
from torch.optim.sgd import sgd


class Adam:
    """torch.optim.Adam(params, lr) (betas 0.9/0.999, eps 1e-8, no weight decay, no amsgrad)."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float) -> None:
        self.params, self.lr = list(params), lr
        self.state: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}  # exp_avg, exp_avg_sq, step

    @torch.no_grad()
    def step(self) -> None:
        params = [p for p in self.params if p.grad is not None]
        for i, p in enumerate(params):
            if id(p) not in self.state:  # as Adam._init_group: a CPU scalar step unless capturable/fused
                self.state[id(p)] = (torch.zeros_like(p, memory_format=torch.preserve_format),
                                     torch.zeros_like(p, memory_format=torch.preserve_format),
                                     torch.tensor(0.0, dtype=_get_scalar_dtype()))
        states = [self.state[id(p)] for p in params]
        adam(params, [p.grad for p in params], [s[0] for s in states], [s[1] for s in states], [],
             [s[2] for s in states], foreach=None, capturable=False, differentiable=False, fused=None,
             grad_scale=None, found_inf=None, has_complex=any(torch.is_complex(p) for p in params),
             decoupled_weight_decay=False, amsgrad=False, beta1=0.9, beta2=0.999, lr=self.lr, weight_decay=0.0,
             eps=1e-8, maximize=False)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None


class SGD:
    """torch.optim.SGD(params, lr, momentum) (no dampening, Nesterov or weight decay)."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, momentum: float = 0.0) -> None:
        self.params, self.lr, self.momentum = list(params), lr, momentum
        self.buffers: dict[int, torch.Tensor | None] = {}

    @torch.no_grad()
    def step(self) -> None:
        params = [p for p in self.params if p.grad is not None]
        buffers = [self.buffers.get(id(p)) for p in params]
        sgd(params, [p.grad for p in params], buffers, has_sparse_grad=any(p.grad.is_sparse for p in params),
            foreach=None, fused=None, grad_scale=None, found_inf=None, weight_decay=0.0, momentum=self.momentum,
            lr=self.lr, dampening=0.0, nesterov=False, maximize=False)
        if self.momentum != 0:  # sgd() fills in the buffers it created, as SGD.step stores them
            self.buffers.update((id(p), b) for p, b in zip(params, buffers))

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None
