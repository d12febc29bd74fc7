"""Use a trained model: the next word of a title, or the class of an image.

One code path for every kind of saved model, so a device's exported file and the run's PyTorch
weights can be compared word for word: a model folder or run folder runs with PyTorch, an
``.onnx`` file with ONNX Runtime and a ``.pt2`` file with torch.export; the vocabulary, class
names and input shape come from the model's own metadata in every case.

Text is cleaned like the training titles (HTML-free, lowercase, letters only); the model reads
its last ``max_title_words - 1`` words and predicts the word after the last one. Images are read
with PIL in the model's mode (grayscale "L" for one channel, "RGB" for three) and must have its
size; 8-bit pixels are scaled to [0, 1] by /255 as the image-folder loader does. A digits model
was trained on sklearn's 8x8 digits (values 0-16 scaled by /16), so give it an 8x8 grayscale PNG
with the digit's values scaled to 0-255 (round(v * 255 / 16)); white strokes on black.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hasa_flwr.data.text import PAD, UNK, clean_title
from hasa_flwr.export import PT2_META, is_text, ort_meta, ort_session, require_onnx, select_model, seq_len

TOP_WORDS, TOP_CLASSES = 5, 3


class PredictError(ValueError):
    """An input the model cannot take; the message says what to give it instead."""


@dataclass
class Predictor:
    """A model's logits function (numpy in, numpy out) and the metadata that gives them meaning."""

    meta: dict[str, Any]
    logits: Callable[[np.ndarray], np.ndarray]
    source: str


def open_predictor(path: str | Path, client: str | None = None, width: float | None = None) -> Predictor:
    """PyTorch for a run or model folder, ONNX Runtime for .onnx, torch.export for .pt2."""
    path = Path(path).expanduser()
    if path.suffix.lower() in (".onnx", ".pt2"):
        if client is not None or width is not None:
            raise PredictError(f"{path.name} holds one exported width: drop --client/--width, or pass the run folder "
                               "to choose a client or width")
        if not path.is_file():
            raise PredictError(f"{path} not found: pass an exported file (`hasa export`) or a run folder")
        return onnx_predictor(path) if path.suffix.lower() == ".onnx" else pt2_predictor(path)
    sel = select_model(path, client, width)

    @torch.no_grad()
    def run(x: np.ndarray) -> np.ndarray:
        return sel.model(torch.from_numpy(x)).numpy()

    return Predictor(sel.meta, run, f"PyTorch, {sel.label}")


def onnx_predictor(path: Path) -> Predictor:
    require_onnx()
    try:
        session = ort_session(path)
    except Exception as err:  # ORT raises its own types for a damaged or foreign file
        raise PredictError(f"{path} is not a readable ONNX model ({type(err).__name__}): export it again with "
                           "`hasa export`") from None
    name = session.get_inputs()[0].name
    meta = ort_meta(session)
    return Predictor(meta, lambda x: session.run(None, {name: x})[0], f"ONNX Runtime, {path}")


def pt2_predictor(path: Path) -> Predictor:
    extra = {PT2_META: ""}
    try:
        program = torch.export.load(str(path), extra_files=extra).module()
    except Exception as err:  # a damaged or foreign archive surfaces as many types
        raise PredictError(f"{path} is not a readable torch.export file ({type(err).__name__}): export it again with "
                           "`hasa export --format pt2`") from None
    if not extra[PT2_META]:
        raise PredictError(f"{path} has no hasa-flwr metadata: export it with `hasa export --format pt2`")

    @torch.no_grad()
    def run(x: np.ndarray) -> np.ndarray:
        return program(torch.from_numpy(x)).numpy()

    return Predictor(json.loads(extra[PT2_META]), run, f"torch.export, {path}")


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max()
    e = np.exp(z)
    return e / e.sum()


def context_ids(meta: dict[str, Any], text: str) -> tuple[list[str], np.ndarray]:
    """The words the model reads (the last max_title_words - 1, cleaned) and their ids (<unk> if unknown)."""
    vocab = meta.get("vocab") or []
    words = clean_title(text, max_words=10**9)[-seq_len(meta):]
    if not words:
        raise PredictError(f"{text!r} has no words after cleaning (letters a-z only): give the start of a title")
    stoi = {w: i for i, w in enumerate(vocab)}
    ids = [stoi.get(w, 1) for w in words]
    if all(i == 1 for i in ids):
        example = ", ".join(vocab[2:7])
        raise PredictError(f"none of the words {' '.join(words)!r} is in the model's vocabulary of {len(vocab) - 2} "
                           f"words: use words from the run's titles (e.g. {example})")
    return words, np.asarray(ids, dtype=np.int64)


def next_words(pred: Predictor, text: str, k: int = TOP_WORDS) -> tuple[list[str], list[tuple[str, float]]]:
    """(the words read, with <unk> for unknown ones; the top-k next words and their probabilities).

    The input is padded to the trained length; the LSTM reads left to right, so the padding after
    the last word changes nothing. <pad> and <unk> are never predicted; probabilities are those
    of the full softmax, so they sum to at most 1."""
    meta = pred.meta
    words, ids = context_ids(meta, text)
    x = np.zeros((1, seq_len(meta)), dtype=np.int64)
    x[0, :len(ids)] = ids
    probs = softmax(pred.logits(x)[0, len(ids) - 1])
    vocab = meta["vocab"]
    order = [i for i in np.argsort(-probs, kind="stable") if vocab[i] not in (PAD, UNK)][:k]
    shown = [w if i != 1 else UNK for w, i in zip(words, ids)]
    return shown, [(vocab[i], float(probs[i])) for i in order]


def load_image(path: str | Path, input_shape: list[int]) -> np.ndarray:
    """(1, C, H, W) float32 in [0, 1], in the model's colour mode and size (as data/imagefolder.py reads)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    channels, height, width = input_shape
    path = Path(path).expanduser()
    try:
        with Image.open(path) as img:
            img.load()
            # a photo's EXIF orientation turns it upright, as HF `datasets` does for the training images
            upright = ImageOps.exif_transpose(img)
            size = upright.size
            pixels = np.asarray(upright.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise PredictError(f"image {path} not found: pass the path of an image file") from None
    except (UnidentifiedImageError, OSError) as err:
        raise PredictError(f"cannot read {path} as an image ({type(err).__name__}): give a PNG or JPEG file") from None
    if size != (width, height):
        raise PredictError(f"{path.name} is {size[0]}x{size[1]} pixels; this model takes {width}x{height} (width x "
                           f"height): resize the image to {width}x{height}")
    x = pixels[None, None] if channels == 1 else pixels.transpose(2, 0, 1)[None]
    return (x.astype(np.float32) / 255.0).copy()


def top_classes(pred: Predictor, image: str | Path, k: int = TOP_CLASSES) -> list[tuple[str, float]]:
    """The k most likely classes of one image (the CNN normalises with this image's own statistics)."""
    meta = pred.meta
    shape = meta["model"]["input_shape"] or [1, 8, 8]
    probs = softmax(pred.logits(load_image(image, shape))[0])
    names = meta.get("class_names") or [str(i) for i in range(len(probs))]
    return [(names[i], float(probs[i])) for i in np.argsort(-probs, kind="stable")[:k]]


def predict_lines(path: str | Path, inputs: list[str], *, client: str | None = None,
                  width: float | None = None) -> list[str]:
    """What `hasa predict` prints: what was read, then one ranked line per prediction."""
    pred = open_predictor(path, client, width)
    if is_text(pred.meta):
        words, top = next_words(pred, " ".join(inputs))
        head = f"next word after {' '.join(words)!r} ({pred.source}):"
    else:
        if len(inputs) != 1:
            raise PredictError(f"this is an image model: give one image file, not {len(inputs)} arguments")
        top = top_classes(pred, inputs[0])
        head = f"classes of {inputs[0]} ({pred.source}):"
    width_name = max(len(name) for name, _ in top)
    return [head] + [f"  {rank}. {name:<{width_name}}  {p:.4f}" for rank, (name, p) in enumerate(top, 1)]
