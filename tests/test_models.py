"""Tests for hasa_flwr.method.models: slicing specs, the exactness property of extracted subnets
(docs/METHOD.md section 4), and the MAC cost model (section 1)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hasa_flwr.method.models import LSTMLanguageModel, Scaler, WidthCNN, build_model, full_sizes, mac_cost
from hasa_flwr.method.subnet import extract, select_units

V, E, H = 23, 12, 10


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def random_subset(size: int, k: int, seed: int) -> torch.Tensor:
    g = np.random.default_rng(seed)
    return torch.as_tensor(np.sort(g.choice(size, size=k, replace=False)), dtype=torch.int64)


# ----------------------------------------------------------------------------- specs


@pytest.mark.parametrize("model, full", [
    (LSTMLanguageModel(V, E, H), {"embed": E, "hidden": H}),
    (WidthCNN(10, 6, 9), {"c1": 6, "c2": 9}),  # the CNN's state has no BN running statistics
], ids=["lstm", "cnn"])
def test_spec_covers_state_and_axis_sizes(model, full):
    spec = model.slicing_spec()
    sd = model.state_dict()
    assert set(spec) == set(sd)
    for name, axes in spec.items():
        assert len(axes) == sd[name].ndim, name
        for a, n in zip(axes, sd[name].shape):
            if a is not None:
                assert a.blocks * full[a.dim] * a.inner == n, name


def test_build_model_and_full_sizes():
    assert full_sizes("lstm", 12, 10) == {"embed": 12, "hidden": 10}
    assert full_sizes("cnn", 6, 9) == {"c1": 6, "c2": 9}
    m = build_model("lstm", V, {"embed": 12, "hidden": 10}, 0.3)
    assert m.embedding.weight.shape == (V, 3)
    assert m.lstm.weight_hh_l0.shape == (4 * 3, 3)
    assert m.head.weight.shape == (V, 3)
    c = build_model("cnn", 10, {"c1": 6, "c2": 9}, 0.5)
    assert c.features[0].weight.shape == (3, 1, 3, 3)
    assert c.features[4].weight.shape == (4, 3, 3, 3)
    assert c.head.weight.shape == (10, 4 * 16)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("mlp", 10, {"c1": 6, "c2": 9})
    with pytest.raises(ValueError, match="unknown model"):
        full_sizes("mlp", 1, 1)


def test_scaler_divides_only_in_training():
    s = Scaler(0.25)
    x = torch.ones(3)
    assert torch.equal(s.train()(x), torch.full((3,), 4.0))
    assert torch.equal(s.eval()(x), x)


# ----------------------------------------------------------------------------- LSTM exactness


def lstm_reference(full: LSTMLanguageModel, embed_idx: torch.Tensor, hidden_idx: torch.Tensor) -> LSTMLanguageModel:
    """The full model with unselected units removed by zeroing (no subnet.py arithmetic)."""
    ref = LSTMLanguageModel(V, E, H)
    ref.load_state_dict(full.state_dict())
    drop_e = [j for j in range(E) if j not in set(embed_idx.tolist())]
    drop_h = [j for j in range(H) if j not in set(hidden_idx.tolist())]
    gate_rows = [g * H + j for g in range(4) for j in drop_h]  # i, f, g, o blocks of H rows
    with torch.no_grad():
        ref.lstm.weight_ih_l0[:, drop_e] = 0.0  # unselected embedding dims have no effect
        for t in (ref.lstm.weight_ih_l0, ref.lstm.weight_hh_l0, ref.lstm.bias_ih_l0, ref.lstm.bias_hh_l0):
            t[gate_rows] = 0.0  # gates of a dropped unit: i = f = o = 1/2, g = 0 -> c = h = 0
        ref.lstm.weight_hh_l0[:, drop_h] = 0.0
        ref.head.weight[:, drop_h] = 0.0
    return ref


CASES = [
    ("prefix", 0.5), ("prefix", 0.3), ("prefix", 1.0),
    ("random", 0.5), ("random", 0.3), ("random", 0.75),
]


@pytest.mark.parametrize("kind,width", CASES)
def test_lstm_extracted_subnet_is_exact(kind, width):
    full = randomize(LSTMLanguageModel(V, E, H), seed=1).eval()
    sizes = {"embed": E, "hidden": H}
    ke, kh = max(1, math.floor(width * E + 1e-9)), max(1, math.floor(width * H + 1e-9))
    if kind == "prefix":
        idx = {"embed": torch.arange(ke), "hidden": torch.arange(kh)}
    else:
        idx = {"embed": random_subset(E, ke, 2), "hidden": random_subset(H, kh, 3)}
        if width < 1:
            assert not torch.equal(idx["hidden"], torch.arange(kh))

    sub = build_model("lstm", V, sizes, width).eval()
    params = extract(full.state_dict(), full.slicing_spec(), idx, sizes)
    sub.load_state_dict(params, strict=True)
    # the subnet's sizes are floor(w * K)
    assert sub.embedding.weight.shape == (V, ke)
    assert sub.lstm.weight_ih_l0.shape == (4 * kh, ke)
    assert sub.lstm.weight_hh_l0.shape == (4 * kh, kh)
    assert sub.lstm.bias_ih_l0.shape == (4 * kh,)
    assert sub.head.weight.shape == (V, kh)

    x = torch.randint(0, V, (5, 9), generator=torch.Generator().manual_seed(4))
    ref = lstm_reference(full, idx["embed"], idx["hidden"]).eval()
    with torch.no_grad():
        got, want = sub(x), ref(x)
    assert got.shape == (5, 9, V)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    if width < 1:  # removing units really changes the function
        assert not torch.allclose(got, full(x).detach(), atol=1e-3)


def test_lstm_exact_with_select_units_random():
    full = randomize(LSTMLanguageModel(V, E, H), seed=5).eval()
    sizes = {"embed": E, "hidden": H}
    idx = select_units("random", 0.6, sizes, server_round=2, seed=9, client=1)
    sub = build_model("lstm", V, sizes, 0.6).eval()
    sub.load_state_dict(extract(full.state_dict(), full.slicing_spec(), idx, sizes))
    x = torch.randint(0, V, (3, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(sub(x), lstm_reference(full, idx["embed"], idx["hidden"])(x), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- CNN exactness

C1, C2, CLASSES = 8, 12, 10


def cnn_reference(full: WidthCNN, c1_idx: torch.Tensor, c2_idx: torch.Tensor) -> WidthCNN:
    channels, height, width = full.input_shape
    ref = WidthCNN(CLASSES, C1, C2, in_channels=channels, image_size=(height, width))
    ref.load_state_dict(full.state_dict())
    drop1 = [j for j in range(C1) if j not in set(c1_idx.tolist())]
    drop2 = [j for j in range(C2) if j not in set(c2_idx.tolist())]
    spatial = (height // 2) * (width // 2)  # one 2x2 max-pool per channel, flattened channel-major (8x8: 16)
    with torch.no_grad():
        conv1, bn1, conv2, bn2 = ref.features[0], ref.features[2], ref.features[4], ref.features[6]
        for t in (conv1.weight, conv1.bias, bn1.weight, bn1.bias):
            t[drop1] = 0.0  # channel is constant 0 -> batch-normalised to 0 -> beta = 0
        conv2.weight[:, drop1] = 0.0
        for t in (conv2.weight, conv2.bias, bn2.weight, bn2.bias):
            t[drop2] = 0.0
        cols = [j * spatial + s for j in drop2 for s in range(spatial)]
        ref.head.weight[:, cols] = 0.0
    return ref


def cnn_exactness_case(kind: str, width: float, shape: tuple[int, int, int] = (1, 8, 8)):
    """A random full CNN for ``shape``, the units of a ``kind`` subnet of ``width``, that subnet loaded
    with the extracted parameters, and the reference with the other units removed."""
    channels, height, wide = shape
    full = randomize(WidthCNN(CLASSES, C1, C2, in_channels=channels, image_size=(height, wide)), seed=6)
    sizes = {"c1": C1, "c2": C2}
    k1, k2 = max(1, math.floor(width * C1 + 1e-9)), max(1, math.floor(width * C2 + 1e-9))
    if kind == "prefix":
        idx = {"c1": torch.arange(k1), "c2": torch.arange(k2)}
    else:
        idx = {"c1": random_subset(C1, k1, 7), "c2": random_subset(C2, k2, 8)}
    sub = build_model("cnn", CLASSES, sizes, width, input_shape=shape)
    sub.load_state_dict(extract(full.state_dict(), full.slicing_spec(), idx, sizes), strict=True)
    return full, sub, cnn_reference(full, idx["c1"], idx["c2"]), k1, k2


@pytest.mark.parametrize("kind,width", CASES)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_cnn_extracted_subnet_is_exact(kind, width, mode):
    full, sub, ref, k1, k2 = cnn_exactness_case(kind, width)
    assert sub.features[0].weight.shape == (k1, 1, 3, 3)
    assert sub.features[4].weight.shape == (k2, k1, 3, 3)
    assert sub.features[6].weight.shape == (k2,)
    assert sub.head.weight.shape == (CLASSES, k2 * 16)
    for m in (sub, ref, full):
        m.train(mode == "train")
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        got, want = sub(x), ref(x)
    assert got.shape == (16, CLASSES)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    if width < 1:
        assert not torch.allclose(got, full(x).detach(), atol=1e-3)


# ----------------------------------------------------------------------------- MAC cost


def lstm_macs(v: int, e: int, h: int) -> int:
    return 4 * h * e + 4 * h * h + h * v  # per time step: input and recurrent gates, head


def cnn_macs(classes: int, c1: int, c2: int) -> int:
    return c1 * 1 * 9 * 64 + c2 * c1 * 9 * 64 + classes * c2 * 16


def test_mac_cost_lstm():
    cost = mac_cost(LSTMLanguageModel(V, E, H))
    assert float(cost(np.array([1.0]))[0]) == pytest.approx(1.0, abs=1e-12)
    grid = np.linspace(0.05, 1.0, 60)
    assert (np.diff(cost(grid)) > 0).all()
    c = float(cost(np.array([0.5]))[0])
    assert 0.25 < c < 0.5
    # counted from the real sliced shapes where floor(w K) is exact
    for w in (0.5, 1.0):
        ke, kh = int(w * E), int(w * H)
        assert float(cost(np.array([w]))[0]) == pytest.approx(lstm_macs(V, ke, kh) / lstm_macs(V, E, H), rel=1e-12)


def test_mac_cost_cnn():
    cost = mac_cost(WidthCNN(CLASSES, C1, C2))
    assert float(cost(np.array([1.0]))[0]) == pytest.approx(1.0, abs=1e-12)
    assert (np.diff(cost(np.linspace(0.05, 1.0, 60))) > 0).all()
    for w in (0.25, 0.5, 0.75):
        k1, k2 = int(w * C1), int(w * C2)
        want = cnn_macs(CLASSES, k1, k2) / cnn_macs(CLASSES, C1, C2)
        assert float(cost(np.array([w]))[0]) == pytest.approx(want, rel=1e-12)
