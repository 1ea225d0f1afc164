"""Adam that updates only the rows of an embedding table a step touched (`--set optimizer=lazy-adam`).

With plain Adam every row of every item table moves every step: a zero gradient still decays the row's moments
and the row still moves by its momentum, so a step costs items x dim however few items the batch names, and an
epoch grows with items x steps. Here the embedding tables give sparse gradients (the rows a batch looked up),
and a row's weight, first and second moment change only in a step that touched it; every other tensor (and a
table used whole, as the full softmax uses the output table) gets the ordinary Adam update.

What changes against Adam, as in TensorFlow's LazyAdam and torch's SparseAdam:
- an untouched row keeps its moments as they were instead of decaying them, and does not move by momentum;
- the L2 weight decay of a table row (coupled, as `adam`'s) is applied only in steps that touch it;
- bias correction counts every step of the run (the tensor's step), not the row's own steps.
A step costs the touched rows x dim: with a sampled loss (`sampled-ce`, `bce`, `bpr`) an epoch grows with the
interactions, not with items x steps. The full softmax (`ce`) touches every output row every step: there lazy
Adam is Adam. One process only: sparse gradients do not take part in DistributedDataParallel's all-reduce here.
"""

from __future__ import annotations

import torch
from torch import nn


def make_tables_sparse(model: nn.Module) -> int:
    """Every nn.Embedding of `model` gives sparse gradients from now on; returns how many there are."""
    tables = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    for table in tables:
        table.sparse = True
    return len(tables)


class LazyAdam(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, decay = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                step = state["step"].item()
                correction1, correction2 = 1 - beta1**step, 1 - beta2**step
                m, v = state["exp_avg"], state["exp_avg_sq"]
                if p.grad.is_sparse:
                    grad = p.grad.coalesce()  # one value per distinct row, repeated look-ups summed
                    rows, values = grad.indices()[0], grad.values()
                    if decay:
                        values = values + decay * p[rows]
                    m_rows = m[rows].mul_(beta1).add_(values, alpha=1 - beta1)
                    v_rows = v[rows].mul_(beta2).addcmul_(values, values, value=1 - beta2)
                    m[rows], v[rows] = m_rows, v_rows
                    p[rows] -= lr / correction1 * m_rows / (v_rows / correction2).sqrt_().add_(eps)
                else:
                    grad = p.grad if not decay else p.grad.add(p, alpha=decay)
                    m.mul_(beta1).add_(grad, alpha=1 - beta1)
                    v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    p.addcdiv_(m, (v / correction2).sqrt_().add_(eps), value=-lr / correction1)
        return loss
