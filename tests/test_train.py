"""Tests for hasa_flwr.method.train: FjORD ordered dropout (prefix-only updates, sampled widths, gradient
masks, exactness), the training loop, and evaluate() on hand-made logits."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hasa_flwr.method.aggregation import Update, aggregate
from hasa_flwr.data import IGNORE_INDEX
from hasa_flwr.method.models import LSTMLanguageModel, build_model
from hasa_flwr.method.subnet import extract, select_units
from hasa_flwr.method.train import FJORD_LEVELS, OrderedDropout, evaluate, loss_fn, make_optimizer, train

V, K = 15, 10
SIZES = {"embed": K, "hidden": K}
MAX_W = 0.6
KL = 6  # floor(0.6 * 10): the client's local sizes


def supernet(seed: int = 0) -> LSTMLanguageModel:
    torch.manual_seed(seed)
    return LSTMLanguageModel(V, K, K)


def data(n: int = 48, t: int = 6, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V, (n, t), generator=g)
    y = torch.roll(x, -1, dims=1)
    y[:, -1] = IGNORE_INDEX
    return x, y


def local_client(full: LSTMLanguageModel):
    idx = select_units("ordered", MAX_W, SIZES)
    local = build_model("lstm", V, SIZES, MAX_W)
    local.load_state_dict(extract(full.state_dict(), full.slicing_spec(), idx, SIZES))
    return idx, local


def lstm_prefix_mask(shape, name: str, k_h: int, k_e: int, kh_full: int) -> torch.Tensor:
    """True where a coordinate of ``name`` belongs to the hidden/embed prefix (k_h, k_e) of a model
    whose hidden size is ``kh_full`` (gate blocks of kh_full rows)."""
    gates = torch.zeros(4 * kh_full, dtype=torch.bool)
    for g in range(4):
        gates[g * kh_full: g * kh_full + k_h] = True
    if name == "embedding.weight":
        m = torch.zeros(shape, dtype=torch.bool)
        m[:, :k_e] = True
    elif name == "lstm.weight_ih_l0":
        m = gates[:, None] & (torch.arange(shape[1]) < k_e)[None, :]
    elif name == "lstm.weight_hh_l0":
        m = gates[:, None] & (torch.arange(shape[1]) < k_h)[None, :]
    elif name in ("lstm.bias_ih_l0", "lstm.bias_hh_l0"):
        m = gates.clone()
    elif name == "head.weight":
        m = torch.zeros(shape, dtype=torch.bool)
        m[:, :k_h] = True
    else:  # head.bias never scales
        m = torch.ones(shape, dtype=torch.bool)
    return m


# ----------------------------------------------------------------------------- levels


def test_levels():
    assert OrderedDropout("lstm", V, SIZES, 0.6).levels() == [0.2, 0.4, 0.6]
    assert OrderedDropout("lstm", V, SIZES, 0.7).levels() == [0.2, 0.4, 0.6, 0.7]
    assert OrderedDropout("lstm", V, SIZES, 1.0).levels() == list(FJORD_LEVELS)
    assert OrderedDropout("lstm", V, SIZES, 0.1).levels() == [0.1]
    for w in (0.25, 0.5, 0.8, 0.95):
        lv = OrderedDropout("lstm", V, SIZES, w).levels()
        assert max(lv) == w and all(p <= w for p in lv) and lv == sorted(lv)


def test_levels_are_distinct_sub_models():
    """A budget-projected width a hair above a level is that level, not a second draw of the same
    sub-model (which would train the client's own width twice as often as FjORD says)."""
    noisy = 0.6 + 2e-16 * 8
    assert noisy != 0.6 and OrderedDropout("lstm", V, SIZES, noisy).levels() == [0.2, 0.4, noisy]
    assert OrderedDropout("lstm", V, SIZES, 0.25).levels() == [0.25]  # 0.2 and 0.25 both keep 2 of 10 units
    tiny = {"embed": 2, "hidden": 2}  # 0.2 and 0.4 keep 1 unit of 2, 0.6 and 0.8 keep 1 too
    assert OrderedDropout("lstm", V, tiny, 1.0).levels() == [0.8, 1.0]


# ----------------------------------------------------------------------------- FjORD training round


def test_fjord_round_updates_only_the_client_prefix():
    full = supernet()
    before = {k: v.clone() for k, v in full.state_dict().items()}
    idx, local = local_client(full)
    od = OrderedDropout("lstm", V, SIZES, MAX_W)
    sampled = []
    inner_forward = od.forward

    def recording_forward(model, x, p):
        sampled.append(p)
        return inner_forward(model, x, p)

    od.forward = recording_forward
    x, y = data()
    loss = train(local, x, y, epochs=2, batch_size=8, lr=0.5, seed=3, ordered=od)
    assert math.isfinite(loss) and loss > 0
    assert len(sampled) == 12  # 48 samples / 8 per batch * 2 epochs
    assert all(p <= MAX_W for p in sampled) and set(sampled) <= set(od.levels())
    assert len(set(sampled)) >= 2  # widths really vary between batches

    update = Update(idx, {k: v.detach().clone() for k, v in local.state_dict().items()}, 48.0)
    out = aggregate(before, [update], full.slicing_spec(), SIZES, "selective")
    changed_inside = 0
    for name, old in before.items():
        inside = lstm_prefix_mask(old.shape, name, KL, KL, K)
        assert torch.equal(out[name][~inside], old[~inside]), name  # outside the 0.6 prefix: untouched
        changed_inside += int((out[name][inside] != old[inside]).sum())
        # inside: exactly the client's trained values
        # (row-major order of the prefix coordinates is the subnet layout, gate blocks included)
        assert torch.equal(out[name][inside], update.params[name].reshape(-1)), name
    assert changed_inside > 100


@pytest.mark.parametrize("p", [0.2, 0.4])
def test_ordered_forward_gradient_zero_outside_prefix(p):
    _, local = local_client(supernet(1))
    od = OrderedDropout("lstm", V, SIZES, MAX_W)
    x, y = data(8, 5, seed=2)
    loss_fn(od.forward(local, x, p), y).backward()
    kp = math.floor(p * K + 1e-9)
    for name, param in local.named_parameters():
        assert param.grad is not None, name
        inside = lstm_prefix_mask(param.shape, name, kp, kp, KL)
        assert torch.count_nonzero(param.grad[~inside]) == 0, name
        assert torch.count_nonzero(param.grad[inside]) > 0, name


@pytest.mark.parametrize("p", [0.2, 0.4])
def test_ordered_forward_equals_zeroed_local_model(p):
    """Independent reference: the width-0.6 local model with units >= floor(pK) zeroed out."""
    _, local = local_client(supernet(2))
    od = OrderedDropout("lstm", V, SIZES, MAX_W)
    kp = math.floor(p * K + 1e-9)
    ref = build_model("lstm", V, SIZES, MAX_W)
    ref.load_state_dict(local.state_dict())
    with torch.no_grad():
        for name, t in ref.named_parameters():
            if name == "embedding.weight":
                continue  # dropped embed dims are cut off by zeroed weight_ih columns
            t[~lstm_prefix_mask(t.shape, name, kp, kp, KL)] = 0.0
    x, _ = data(6, 7, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(od.forward(local, x, p), ref(x), atol=1e-6, rtol=0)
        # at the client's own width it is the local model itself
        torch.testing.assert_close(od.forward(local, x, MAX_W), local(x), atol=0, rtol=0)


def test_ordered_cnn_gradient_zero_outside_prefix():
    sizes = {"c1": 8, "c2": 10}
    local = build_model("cnn", 5, sizes, 0.5)  # 4 and 5 channels
    od = OrderedDropout("cnn", 5, sizes, 0.5)
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    loss_fn(od.forward(local, x, 0.2), y).backward()  # 1 and 2 channels
    g = dict(local.named_parameters())
    assert torch.count_nonzero(g["features.0.weight"].grad[1:]) == 0
    assert torch.count_nonzero(g["features.0.weight"].grad[:1]) > 0
    assert torch.count_nonzero(g["features.4.weight"].grad[2:]) == 0
    assert torch.count_nonzero(g["features.4.weight"].grad[:, 1:]) == 0
    assert torch.count_nonzero(g["features.4.weight"].grad[:2, :1]) > 0
    assert torch.count_nonzero(g["head.weight"].grad[:, 2 * 16:]) == 0
    assert torch.count_nonzero(g["head.weight"].grad[:, :2 * 16]) > 0


# ----------------------------------------------------------------------------- train loop


def test_train_is_seeded():
    x, y = data(24, 5, seed=7)
    a, b, c = supernet(4), supernet(4), supernet(4)
    la = train(a, x, y, epochs=1, batch_size=8, lr=0.1, seed=0, momentum=0.9)
    lb = train(b, x, y, epochs=1, batch_size=8, lr=0.1, seed=0, momentum=0.9)
    train(c, x, y, epochs=1, batch_size=8, lr=0.1, seed=1, momentum=0.9)  # other batch order
    assert la == lb
    for (k, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), k
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.state_dict().values(), c.state_dict().values()))


def test_train_learns_deterministic_sequence():
    x = torch.arange(8).repeat(16, 1)  # every row 0 1 ... 7: the next word is deterministic
    y = torch.roll(x, -1, dims=1)
    y[:, -1] = IGNORE_INDEX
    model = supernet(4)
    before = evaluate(model, x, y)
    loss = train(model, x, y, epochs=3, batch_size=4, lr=0.05, seed=0, optimizer="adam")
    after = evaluate(model, x, y)
    assert before["n"] == after["n"] == 16 * 7
    assert after["loss"] < 0.5 * before["loss"]
    assert loss < before["loss"]
    assert after["accuracy"] > 0.9


def test_train_skips_batches_without_labels():
    x, y = data(16, 4)
    y[:8] = IGNORE_INDEX  # half the rows hold no label: the loss is over the labelled ones
    model = supernet(5)
    loss = train(model, x, y, epochs=1, batch_size=16, lr=0.1, seed=0)
    assert math.isfinite(loss)
    y[:] = IGNORE_INDEX
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    assert train(model, x, y, epochs=1, batch_size=4, lr=0.1, seed=0) == 0.0
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshot[k])


def torch_optim(name: str, params, lr: float, momentum: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=momentum) if name == "sgd" else torch.optim.Adam(params, lr=lr)


@pytest.mark.parametrize("optimizer,momentum,ordered", [("adam", 0.0, False), ("sgd", 0.0, False),
                                                         ("sgd", 0.9, False), ("adam", 0.0, True)])
@pytest.mark.parametrize("model", ["lstm", "cnn"])
def test_optimizers_match_torch_optim_bit_for_bit(monkeypatch, optimizer, momentum, ordered, model):
    """hasa_flwr.method.optimizers does torch.optim's arithmetic: the trained parameters are identical."""
    import hasa_flwr.method.train as train_module

    sizes = SIZES if model == "lstm" else {"c1": 4, "c2": 6}
    if model == "lstm":
        x, y = data(n=40)
        classes, shape = V, None
    else:
        g = torch.Generator().manual_seed(3)
        x, y, classes, shape = torch.rand(40, 1, 8, 8, generator=g), torch.randint(0, 5, (40,), generator=g), 5, (1, 8, 8)
    trained = []
    for make in (train_module.make_optimizer, torch_optim):
        monkeypatch.setattr(train_module, "make_optimizer", make)
        torch.manual_seed(0)
        net = build_model(model, classes, sizes, 0.8, input_shape=shape)
        fjord = OrderedDropout(model, classes, sizes, 0.8, input_shape=shape) if ordered else None
        loss = train(net, x, y, epochs=3, batch_size=8, lr=0.01, optimizer=optimizer, momentum=momentum, seed=1,
                     ordered=fjord)
        trained.append((loss, net.state_dict()))
    (ours_loss, ours), (ref_loss, ref) = trained
    assert ours_loss == ref_loss
    assert all(torch.equal(ours[k], ref[k]) for k in ref)
    assert any(not torch.equal(ref[k], v) for k, v in build_model(model, classes, sizes, 0.8,
                                                                   input_shape=shape).state_dict().items())


def test_no_torch_compile_import_to_train():
    """A device's per-message process never imports torch._dynamo (about 0.9 CPU-seconds) to train."""
    import subprocess
    import sys

    code = ("import sys, torch; from hasa_flwr.method.models import build_model; from hasa_flwr.method.train import train; "
            "m = build_model('lstm', 9, {'embed': 4, 'hidden': 4}); x = torch.randint(0, 9, (8, 5)); "
            "train(m, x, x, epochs=1, batch_size=4, lr=0.01, seed=0, optimizer='adam'); "
            "print('torch._dynamo' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          timeout=120).stdout.strip() == "False"


def test_unknown_optimizer():
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("lbfgs", supernet().parameters(), 0.1, 0.0)


# ----------------------------------------------------------------------------- evaluate


class FixedLogits(nn.Module):
    """Returns table[x]: input tokens are row indices into a fixed logits table."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        return self.table[x]


TABLE = torch.tensor([
    [4.0, 3.0, 2.0, 1.0],   # target 0: top1 hit
    [4.0, 3.0, 2.0, 1.0],   # target 2: top1 miss, top3 hit
    [1.0, 2.0, 3.0, 4.0],   # target 0: top3 = {3, 2, 1}, miss
    [0.0, 5.0, 0.0, 0.0],   # ignored (would be a miss)
    [1.0, 4.0, 3.0, 2.0],   # target 1: hit
    [9.0, 0.0, 0.0, 0.0],   # ignored (would be a hit)
])
TARGETS = torch.tensor([0, 2, 0, IGNORE_INDEX, 1, IGNORE_INDEX])


def hand_loss() -> float:
    keep = [0, 1, 2, 4]
    total = 0.0
    for i in keep:
        row = TABLE[i].tolist()
        lse = math.log(sum(math.exp(v) for v in row))
        total += lse - row[int(TARGETS[i])]
    return total / len(keep)


@pytest.mark.parametrize("batch_size", [1, 2, 4, 512])
def test_evaluate_hand_logits(batch_size):
    model = FixedLogits(TABLE).train()
    r = evaluate(model, torch.arange(6), TARGETS, batch_size=batch_size)
    assert r["n"] == 4
    assert r["accuracy"] == pytest.approx(2 / 4)
    assert r["top3"] == pytest.approx(3 / 4)
    assert r["loss"] == pytest.approx(hand_loss(), rel=1e-6)
    assert model.modes and not any(model.modes)  # evaluated in eval mode


def test_evaluate_sequences_and_all_ignored():
    model = FixedLogits(TABLE)
    x = torch.arange(6).view(2, 3)  # [batch, time] -> logits [2, 3, 4]
    r = evaluate(model, x, TARGETS.view(2, 3), batch_size=1)
    assert (r["n"], r["accuracy"], r["top3"]) == (4, 0.5, 0.75)
    none = evaluate(model, x, torch.full((2, 3), IGNORE_INDEX))
    assert none == {"accuracy": 0.0, "top3": 0.0, "loss": 0.0, "n": 0}


def test_evaluate_top3_with_fewer_than_three_classes():
    model = FixedLogits(torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    r = evaluate(model, torch.arange(2), torch.tensor([0, 1]))
    assert r["accuracy"] == 0.5 and r["top3"] == 1.0


def test_a_device_refuses_a_model_wider_than_its_cap(task_identity):
    """The client checks every message's width against its own max-width before building anything."""
    from flwr.app import ConfigRecord, Context, Message, RecordDict

    from hasa_flwr.federation import client
    from hasa_flwr.study.launch import app_defaults
    from conftest import ROOT

    ctx = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 7, "max-width": 0.3},
                  state=RecordDict(), run_config=app_defaults(ROOT))
    msg = Message(RecordDict({"config": ConfigRecord({"width": 0.5, "ordered": False, "train-seed": 1})}),
                  dst_node_id=1, message_type="train")
    with pytest.raises(ValueError, match="max-width is 0.3 but the server sent a width-0.5 model"):
        client.train_subnet(msg, ctx)
    assert client.checked_width(ctx, 0.3) == 0.3
    for bad in (0.0, -1.0, 1.5):  # a cap that is not a width is this device's configuration error
        ctx.node_config["max-width"] = bad
        with pytest.raises(ValueError, match=rf"^node config max-width={bad:g} is outside \(0, 1\]"):
            client.checked_width(ctx, 0.3)
    del ctx.node_config["max-width"]
    assert client.node_cap(ctx) is None and client.checked_width(ctx, 1.0) == 1.0


def test_compute_device_from_node_config():
    import torch
    from flwr.app import Context, RecordDict

    from hasa_flwr.federation.client import compute_device

    def ctx(**node):
        return Context(1, 1, node, RecordDict(), {})
    assert compute_device(ctx()).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert compute_device(ctx(device="cpu")).type == "cpu"
    with pytest.raises(ValueError, match="unknown node config device 'tpu'"):
        compute_device(ctx(device="tpu"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device=cuda but this device has no usable CUDA GPU"):
            compute_device(ctx(device="cuda"))
