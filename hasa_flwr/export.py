"""Export a saved supernet prefix or a client's subnet to ONNX or torch.export (.pt2), checked.

An exported file must compute what the PyTorch model computes, so every export is run once
more, with ONNX Runtime or the reloaded program, on the run's own test inputs (rebuilt from its
run config where this machine has the data) and rejected if any logit differs by 1e-4 or more.
The model.json metadata travels inside the file (ONNX ``metadata_props["hasa_flwr"]``, a .pt2
extra file ``hasa_flwr.json``), so ``hasa predict`` needs nothing else to read the vocabulary.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from hasa_flwr.data.atomic import atomic_path
from hasa_flwr.method.model_files import SavedModel, load_model

if TYPE_CHECKING:
    from hasa_flwr.data import FederatedData

FORMATS = ("onnx", "pt2")
META_KEY = "hasa_flwr"            # ONNX metadata_props key
PT2_META = "hasa_flwr.json"       # .pt2 extra file
TOLERANCE = 1e-4                  # largest |logit difference| an export may show
OPSET = 17
CHECK_ROWS = 512                  # real inputs an export is checked on (evenly spaced over the test splits)
INSTALL = 'pip install "hasa-flwr[export]"'


class ExportError(ValueError):
    """A bad request (width, client, format, missing extra): the message says how to fix it."""


class ExportMismatch(RuntimeError):
    """The exported file computes something else than PyTorch: nothing was written."""


def require_onnx() -> None:
    """onnx and onnxruntime are an optional extra: say how to install them, in one line."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise ExportError(f"ONNX needs the packages onnx and onnxruntime ({err.name or err} is missing): "
                          f"{INSTALL}") from None


@dataclass
class Selected:
    """The model to export or run: its saved folder, the built module at ``width``, its metadata."""

    saved: SavedModel
    model: nn.Module
    width: float

    @property
    def meta(self) -> dict[str, Any]:
        return exported_meta(self.saved, self.width)

    @property
    def label(self) -> str:
        client = self.saved.meta.get("client")
        if client and self.width == self.saved.width:
            what = f'client "{client}"\'s width-{self.width:g} subnet'
        elif self.width == 1.0:
            what = "the supernet (width 1)"
        else:
            what = f"the width-{self.width:g} prefix of the supernet"
        return f"{what} ({self.saved.folder})"


def select_model(path: str | Path, client: str | None = None, width: float | None = None) -> Selected:
    """A run folder's supernet (optionally a narrower prefix of it), or ``client``'s subnet."""
    if width is not None and not 0.0 < width <= 1.0:
        raise ExportError(f"width {width:g} is outside (0, 1]: pass a fraction of the supernet's width, e.g. 0.5")
    saved = load_model(path, client)
    model = saved.build(width)
    return Selected(saved, model, saved.width if width is None else float(width))


def exported_meta(saved: SavedModel, width: float) -> dict[str, Any]:
    """model.json as it holds for the exported width (the weight digest describes the .safetensors only)."""
    meta = {k: v for k, v in saved.meta.items() if k not in ("tensors", "weights_sha256")}
    if width != saved.width:
        meta = {**meta, "width": float(width), "client": None}
    return meta


def is_text(meta: dict[str, Any]) -> bool:
    return meta["model"]["kind"] == "lstm"


def seq_len(meta: dict[str, Any]) -> int:
    """Positions a text model reads: max_title_words - 1 (the last word is only ever a target)."""
    return int(meta.get("max_title_words") or 24) - 1


def input_spec(meta: dict[str, Any]) -> tuple[str, dict[int, str]]:
    """The input's name and its dynamic axes (batch; for text also the sequence)."""
    return ("tokens", {0: "batch", 1: "sequence"}) if is_text(meta) else ("images", {0: "batch"})


def random_inputs(meta: dict[str, Any], rows: int, seed: int = 0) -> torch.Tensor:
    """Valid inputs without data: word ids (never <pad>/<unk>) or pixels in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    if is_text(meta):
        vocab = int(meta["model"]["num_classes"])
        return torch.randint(min(2, vocab - 1), vocab, (rows, seq_len(meta)), generator=gen)
    shape = tuple(meta["model"]["input_shape"] or (1, 8, 8))
    return torch.rand((rows, *shape), generator=gen)


def run_data(meta: dict[str, Any]) -> tuple[FederatedData | None, str]:
    """The run's data rebuilt from its run config, or (None, why not) when this machine lacks it or it differs."""
    from hasa_flwr.federation.config import Settings

    try:
        settings = Settings.from_dict(meta["run_config"])
        fed = settings.load_data()
    except Exception as err:  # noqa: BLE001 - any reason to lack the data means: check on random inputs, say why
        return None, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")
    m = meta["model"]
    if is_text(meta) and fed.vocab != meta.get("vocab"):
        return None, "the vocabulary rebuilt from the data on this machine differs from the model's"
    if not is_text(meta) and (fed.num_classes != m["num_classes"]
                              or list(fed.input_shape or ()) != list(m["input_shape"] or ())):
        return None, "the images on this machine differ from the model's (classes or shape)"
    return fed, ""


@dataclass
class CheckInputs:
    """What an export is checked on: real test inputs, or random valid ones with a note saying why."""

    x: torch.Tensor
    what: str
    note: str = ""


def test_inputs(meta: dict[str, Any], rows: int = CHECK_ROWS) -> CheckInputs:
    """Real test inputs of the run (the client's own split for a client's subnet), else random ones."""
    fed, why = run_data(meta)
    if fed is None:
        return CheckInputs(random_inputs(meta, 64), "64 random valid inputs",
                           f"note: the run's data is not available on this machine ({why}); checking on random "
                           "valid inputs instead of real ones")
    clients = [c for c in fed.clients if c.name == meta.get("client")] or fed.clients
    x = torch.cat([c.x_test for c in clients])
    if len(x) > rows:
        x = x[torch.linspace(0, len(x) - 1, rows).long()]
    client = meta.get("client")
    what = f'client "{client}"\'s' if len(clients) == 1 and client else "the clients'"
    return CheckInputs(x, f"{len(x)} real test inputs ({what} test split, {meta['run_config'].get('dataset')})")


class BatchStatsNorm(nn.Module):
    """BatchNorm2d without running statistics, spelt out: the ONNX exporter cannot export batch
    statistics with a dynamic batch axis, but means and variances it can (same numbers)."""

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = bn.weight, bn.bias, bn.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = (x - mean).pow(2).mean(dim=(0, 2, 3), keepdim=True)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def onnx_ready(model: nn.Module) -> nn.Module:
    """A copy whose batch-statistics norms are plain arithmetic (see BatchStatsNorm)."""
    net = copy.deepcopy(model).eval()
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d) and not child.track_running_stats:
                setattr(parent, name, BatchStatsNorm(child))
    return net


def onnx_bytes(model: nn.Module, meta: dict[str, Any]) -> bytes:
    """The ONNX model (TorchScript exporter: seconds, not minutes) with model.json in its metadata."""
    require_onnx()
    import onnx

    name, axes = input_spec(meta)
    example = random_inputs(meta, 2)
    buf = io.BytesIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(onnx_ready(model), (example,), buf, dynamo=False, input_names=[name],
                          output_names=["logits"], dynamic_axes={name: axes, "logits": {0: "batch"}},
                          opset_version=OPSET)
    proto = onnx.load_from_string(buf.getvalue())
    proto.metadata_props.add(key=META_KEY, value=json.dumps(meta))
    return proto.SerializeToString()


def ort_session(model: bytes | str | Path, threads: int = 0):
    """An ONNX Runtime CPU session (``threads`` 0 = its default)."""
    require_onnx()
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1 if threads else 0
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def ort_meta(session) -> dict[str, Any]:
    """model.json as embedded by ``onnx_bytes``; ValueError if the file is not a hasa-flwr export."""
    text = session.get_modelmeta().custom_metadata_map.get(META_KEY)
    if not text:
        raise ExportError("this .onnx file has no hasa-flwr metadata: export it with `hasa export`")
    return json.loads(text)


@torch.no_grad()
def max_difference(model: nn.Module, run, x: torch.Tensor) -> float:
    """Largest |logit difference| between PyTorch and ``run`` (the exported model), on the batch
    ``x`` and on its first row alone (batch 1, how predict and the latency bench call it)."""
    worst = 0.0
    for batch in (x, x[:1]):
        ref = model(batch).numpy()
        got = np.asarray(run(batch))
        if got.shape != ref.shape:
            return float("inf")
        worst = max(worst, float(np.abs(got - ref).max()))
    return worst if np.isfinite(worst) else float("inf")


def save_onnx(sel: Selected, tmp: Path, x: torch.Tensor) -> float:
    data = onnx_bytes(sel.model, sel.meta)
    tmp.write_bytes(data)
    session = ort_session(tmp)
    name = session.get_inputs()[0].name
    return max_difference(sel.model, lambda b: session.run(None, {name: b.numpy()})[0], x)


def save_pt2(sel: Selected, tmp: Path, x: torch.Tensor) -> float:
    """torch.export with a dynamic batch (the LSTM's sequence length specialises, so it is fixed)."""
    from torch.export import Dim

    example = random_inputs(sel.meta, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(sel.model, (example,), dynamic_shapes=({0: Dim("batch")},))
        torch.export.save(program, str(tmp), extra_files={PT2_META: json.dumps(sel.meta)})
        loaded = torch.export.load(str(tmp)).module()
    return max_difference(sel.model, loaded, x)


@dataclass
class ExportReport:
    out: Path
    label: str
    seconds: float
    max_diff: float
    checked: CheckInputs
    size: int
    fmt: str

    def lines(self) -> list[str]:
        runtime = "ONNX Runtime" if self.fmt == "onnx" else "the reloaded torch.export program"
        note = [self.checked.note] if self.checked.note else []
        return note + [f"exported {self.label} to {self.out} ({self.size / 1024:.1f} KiB) in {self.seconds:.2f} s",
                       f"checked with {runtime} on {self.checked.what}: max |logit difference| vs PyTorch = "
                       f"{self.max_diff:.2e} (< {TOLERANCE:g})"]


def export_model(path: str | Path, out: str | Path, *, fmt: str = "onnx", client: str | None = None,
                 width: float | None = None) -> ExportReport:
    """Export and check; ``out`` appears only if the check passes (ExportMismatch otherwise)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        require_onnx()
    out = Path(out)
    if out.is_dir():
        raise ExportError(f"--out {out} is a folder: give a file name, e.g. {out / ('model.' + fmt)}")
    sel = select_model(path, client, width)
    checked = test_inputs(sel.meta)
    start = time.perf_counter()
    with atomic_path(out) as tmp:
        diff = (save_onnx if fmt == "onnx" else save_pt2)(sel, tmp, checked.x)
        seconds = time.perf_counter() - start
        if not diff < TOLERANCE:
            raise ExportMismatch(f"the exported {fmt} model differs from PyTorch by up to {diff:.2e} in a logit "
                                 f"(limit {TOLERANCE:g}) on {checked.what}; nothing was written")
        size = tmp.stat().st_size
    return ExportReport(out, sel.label, seconds, diff, checked, size, fmt)

