"""Width-scalable supernets.

A width-w subnet is the same class built with smaller scalable sizes (``sub_sizes``); the
slicing spec says which axis of which parameter follows which scalable dimension, so
``subnet.extract`` can cut a full state dict down to the subnet's layout.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from hasa_flwr.method.subnet import Axis, Spec, sub_sizes

MODELS = ("lstm", "cnn")
DIGITS_SHAPE = (1, 8, 8)  # (channels, height, width) of sklearn's digits: the CNN's default input


class LSTMLanguageModel(nn.Module):
    """Embedding -> one LSTM layer -> linear head over the vocabulary, one prediction per position.

    Scalable dimensions: ``embed`` and ``hidden``; the vocabulary never scales.
    """

    def __init__(self, vocab_size: int, embed: int, hidden: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed)
        self.lstm = nn.LSTM(embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embedding(x))
        return self.head(out)

    @staticmethod
    def slicing_spec() -> Spec:
        gates = Axis("hidden", blocks=4)  # PyTorch stacks the i, f, g, o gates along dim 0
        return {
            "embedding.weight": (None, Axis("embed")),
            "lstm.weight_ih_l0": (gates, Axis("embed")),
            "lstm.weight_hh_l0": (gates, Axis("hidden")),
            "lstm.bias_ih_l0": (gates,),
            "lstm.bias_hh_l0": (gates,),
            "head.weight": (None, Axis("hidden")),
            "head.bias": (None,),
        }


class Scaler(nn.Module):
    """HeteroFL's scaler: divide activations by the width while training, so a narrow subnet's
    pre-activations have the full model's scale."""

    def __init__(self, width: float) -> None:
        super().__init__()
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.width if self.training else x


class WidthCNN(nn.Module):
    """Two conv blocks and a linear head for small images (8x8 digits, or the users' own size).

    Normalisation is static BatchNorm (``track_running_stats=False``): it normalises with the
    current batch's statistics in training and evaluation alike, so no running statistics are
    averaged across clients of different widths, and it is per channel, so removing a channel
    does not change the others (slicing stays exact; GroupNorm would mix channels in a group).
    The head sees every pooled position, so its size grows with the image: keep images small.
    """

    def __init__(self, num_classes: int, c1: int, c2: int, *, in_channels: int = 1,
                 image_size: int | tuple[int, int] = 8, width: float = 1.0, scaler: bool = False) -> None:
        super().__init__()
        height, wide = (image_size, image_size) if isinstance(image_size, int) else image_size
        if min(height, wide) < 2:
            raise ValueError(f"images of {height}x{wide} pixels are too small for the CNN's 2x2 pooling: use images "
                             "of at least 2x2")
        self.input_shape = (in_channels, height, wide)
        scale = Scaler(width) if scaler else nn.Identity()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1), scale, nn.BatchNorm2d(c1, track_running_stats=False), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1), scale, nn.BatchNorm2d(c2, track_running_stats=False), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.spatial = (height // 2) * (wide // 2)
        self.conv_positions = height * wide  # 3x3 convs with padding 1 keep the image size
        self.head = nn.Linear(c2 * self.spatial, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))

    def slicing_spec(self) -> Spec:
        c1, c2 = Axis("c1"), Axis("c2")
        return {
            "features.0.weight": (c1, None, None, None),
            "features.0.bias": (c1,),
            "features.2.weight": (c1,),
            "features.2.bias": (c1,),
            "features.4.weight": (c2, c1, None, None),
            "features.4.bias": (c2,),
            "features.6.weight": (c2,),
            "features.6.bias": (c2,),
            "head.weight": (None, Axis("c2", inner=self.spatial)),
            "head.bias": (None,),
        }


def full_sizes(model: str, embed: int, hidden: int) -> dict[str, int]:
    """Full sizes of the scalable dimensions; the LSTM's are (embed, hidden), the CNN's (c1, c2)."""
    if model not in MODELS:
        raise ValueError(f"unknown model '{model}': choose one of {', '.join(MODELS)}")
    return {"embed": embed, "hidden": hidden} if model == "lstm" else {"c1": embed, "c2": hidden}


def build_model(model: str, num_classes: int, sizes: dict[str, int], width: float = 1.0,
                *, scaler: bool = False, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """The width-``width`` member of the supernet family whose full sizes are ``sizes``.

    ``input_shape``: the CNN's (channels, height, width), from the data (default: digits'); the
    LSTM ignores it."""
    k = sub_sizes(width, sizes)
    if model == "lstm":
        return LSTMLanguageModel(num_classes, k["embed"], k["hidden"])
    if model == "cnn":
        channels, height, wide = input_shape or DIGITS_SHAPE
        return WidthCNN(num_classes, k["c1"], k["c2"], in_channels=channels, image_size=(height, wide), width=width,
                        scaler=scaler)
    raise ValueError(f"unknown model '{model}': choose one of {', '.join(MODELS)}")


def mac_cost(model: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """cost(w): multiply-accumulates per sample of the width-w subnet over the full model's.

    Counted from the parameter shapes: a weight with s scaled axes costs numel * w^s (a conv
    weight once per output position); embedding lookups cost nothing. Continuous in w, so the
    budget can be met exactly.
    """
    spec = model.slicing_spec()
    terms: dict[int, float] = {}
    for name, t in model.state_dict().items():
        if t.ndim < 2 or name.startswith("embedding"):
            continue
        macs = t.numel() * (getattr(model, "conv_positions", 1) if t.ndim == 4 else 1)
        power = sum(a is not None for a in spec[name])
        terms[power] = terms.get(power, 0.0) + float(macs)
    total = sum(terms.values())
    return lambda w: sum(m * np.asarray(w, dtype=np.float64) ** p for p, m in terms.items()) / total
