"""Local training and evaluation loops, shared by text (per-position targets) and images.

Targets equal to IGNORE_INDEX (padding, <unk>) count neither in the loss nor in accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from hasa_flwr.data import IGNORE_INDEX
from hasa_flwr.method.models import build_model
from hasa_flwr.method.optimizers import SGD, Adam
from hasa_flwr.method.subnet import gather, select_units, sub_sizes

OPTIMIZERS = ("sgd", "adam")
FJORD_LEVELS = (0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass
class OrderedDropout:
    """FjORD: each batch trains the prefix sub-model of a random width p <= the client's width."""

    model: str
    num_classes: int
    sizes: dict[str, int]          # full supernet sizes
    max_width: float
    scaler: bool = False
    input_shape: tuple[int, ...] | None = None  # CNN: the data's (channels, height, width)
    _skeletons: dict[float, nn.Module] = field(default_factory=dict)

    def levels(self) -> list[float]:
        """FjORD's widths up to the client's, one per distinct sub-model. Widths that keep the same
        units are one level (the wider wins): a budget-projected 0.40000000000000013 is the 0.4
        level, not a second draw of it, and tiny layers do not double-count their narrowest widths."""
        by_units = {}
        for p in sorted({p for p in FJORD_LEVELS if p < self.max_width} | {self.max_width}):
            by_units[tuple(sub_sizes(p, self.sizes).values())] = p
        return sorted(by_units.values())

    def forward(self, model: nn.Module, x: torch.Tensor, p: float) -> torch.Tensor:
        """Run the width-p prefix of ``model``; gradients flow back into the prefix entries only."""
        if p >= self.max_width:
            return model(x)
        if p not in self._skeletons:
            self._skeletons[p] = build_model(self.model, self.num_classes, self.sizes, p, scaler=self.scaler,
                                             input_shape=self.input_shape).to(x.device).train()
        # units are counted on the full sizes, positions laid out in the local model's sizes
        sliced = gather(dict(model.named_parameters()), model.slicing_spec(),
                        select_units("prefix", p, self.sizes), sub_sizes(self.max_width, self.sizes))
        return functional_call(self._skeletons[p], sliced, (x,))


def make_optimizer(name: str, params, lr: float, momentum: float) -> SGD | Adam:
    """torch.optim's SGD or Adam arithmetic (hasa_flwr.method.optimizers: without importing torch.compile)."""
    if name == "sgd":
        return SGD(params, lr=lr, momentum=momentum)
    if name == "adam":
        return Adam(params, lr=lr)
    raise ValueError(f"unknown optimizer '{name}': choose one of {', '.join(OPTIMIZERS)}")


def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=IGNORE_INDEX)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, batch_size: int, lr: float,
          seed: int, optimizer: str = "sgd", momentum: float = 0.0, clip: float = 5.0,
          ordered: OrderedDropout | None = None, device: str | torch.device = "cpu") -> float:
    """Train in place on ``device`` (the model is moved there; batches are drawn on the CPU with the
    seeded generator, so the order never depends on the device); returns the mean loss over all
    batches (per labelled target)."""
    model.to(device).train()
    opt = make_optimizer(optimizer, model.parameters(), lr, momentum)
    gen = torch.Generator().manual_seed(seed)
    levels = ordered.levels() if ordered else None
    total, count = 0.0, 0
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(batch_size):
            xb, yb = x[idx].to(device), y[idx].to(device)
            if (yb != IGNORE_INDEX).sum() == 0:
                continue
            if ordered:
                p = levels[int(torch.randint(len(levels), (1,), generator=gen))]
                logits = ordered.forward(model, xb, p)
            else:
                logits = model(xb)
            loss = loss_fn(logits, yb)
            opt.zero_grad()
            loss.backward()
            if clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            total += loss.item()
            count += 1
    return total / max(count, 1)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512,
             device: str | torch.device = "cpu") -> dict[str, float]:
    """Top-1 and top-3 accuracy and mean loss over labelled targets (on ``device``)."""
    model.to(device).eval()
    hits1 = hits3 = 0
    loss_sum, n = 0.0, 0
    for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
        xb, yb = xb.to(device), yb.to(device)
        logits = model(xb)
        logits = logits.reshape(-1, logits.shape[-1])
        yb = yb.reshape(-1)
        keep = yb != IGNORE_INDEX
        logits, yb = logits[keep], yb[keep]
        if len(yb) == 0:
            continue
        top = logits.topk(min(3, logits.shape[-1]), dim=-1).indices
        hits1 += int((top[:, 0] == yb).sum())
        hits3 += int((top == yb[:, None]).any(dim=-1).sum())
        loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
        n += len(yb)
    if n == 0:
        return {"accuracy": 0.0, "top3": 0.0, "loss": 0.0, "n": 0}
    return {"accuracy": hits1 / n, "top3": hits3 / n, "loss": loss_sum / n, "n": n}
