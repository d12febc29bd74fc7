"""What a client does with each message: the vocabulary and query rounds, training, evaluation.

The ClientApp in client_app.py only routes messages here. A client reads the same run config as
the server (so both derive identical model sizes) and its own node config. In deployment a device
names its own file or image folder (`data-path`, optionally `client-name`) and reads nothing
else; the built-in data sets and simulations name a partition instead (`partition-id`,
`num-partitions`). Other node config: `max-width` (device cap) and `threads`.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from hasa_flwr.federation.config import Settings, settings_from_run_config
from hasa_flwr.data import (LOCAL, ClientData, DataError, encode_split, node_image_data, read_candidates, read_vocab,
                            vocab_hash)
from hasa_flwr.data.cache import cached_partition, cached_split, cached_tensors, default_cache_dir
from hasa_flwr.data.files import resolve_path
from hasa_flwr.method.model_files import save_model
from hasa_flwr.method.scores import entropy_scores, jsd_to_pooled
from hasa_flwr.method.subnet import hash_seed
from hasa_flwr.method.train import OrderedDropout, evaluate, train

VOCAB_STATE = "hasa.vocab"  # context.state key: the agreed vocabulary persists per node across messages
_ENCODED: dict[tuple, ClientData] = {}  # simulation actors serve many messages: encode once per vocabulary


def node_identity(settings: Settings, context: Context) -> tuple[int, str, str]:
    """(partition id or LOCAL, own data file, own client name) from this node's config."""
    node = context.node_config
    if "threads" in node:
        torch.set_num_threads(int(node["threads"]))
    if "data-path" in node:  # a device with its own file: the server numbers it
        return LOCAL, str(node["data-path"]), str(node.get("client-name", ""))
    if "partition-id" not in node:
        raise DataError("this SuperNode has neither data-path nor partition-id in its node config: start it with "
                        "--node-config 'data-path=\"/path/to/own/file.csv\"' (your data) or partition-id and "
                        "num-partitions (built-in data sets)")
    pid = int(node["partition-id"])
    if not 0 <= pid < settings.num_clients:
        raise ValueError(f"partition-id {pid} is outside 0..{settings.num_clients - 1}: check the SuperNode's "
                         "node config and num-clients")
    return pid, "", ""


def agreed_vocab(settings: Settings, context: Context, expected_hash: str | None) -> list[str]:
    """The federation's vocabulary: the shared file, or what the server sent in the query round."""
    if settings.vocab_path:
        vocab = read_vocab(resolve_path(settings.vocab_path, "vocab-path"))
    elif VOCAB_STATE in context.state.config_records:
        vocab = list(context.state.config_records[VOCAB_STATE]["words"])
    else:
        raise DataError("this device has not received the federation's vocabulary (its state was lost): restart the run")
    if expected_hash is not None and vocab_hash(vocab) != expected_hash:
        raise DataError(f"this device's vocabulary ({vocab_hash(vocab)}) differs from the server's ({expected_hash}): "
                        "give every device and the server the same vocab-path file")
    return vocab


def client_data(settings: Settings, context: Context, expected_hash: str | None = None) -> tuple[ClientData, int]:
    """This node's tensors and the number of classes (text: the agreed vocabulary's size)."""
    pid, path, name = node_identity(settings, context)
    src = settings.source
    if src.kind == "image":
        data = node_image_data(src, pid, path, name)
        return data, len(data.classes)
    vocab = agreed_vocab(settings, context, expected_hash)
    key = (src, pid, path, name, vocab_hash(vocab))
    if key not in _ENCODED:
        _ENCODED.clear()  # one run's data at a time
        if pid == LOCAL:  # a device: every message is a fresh process, so prepare once, on disk
            _ENCODED[key] = cached_tensors(src, path, name, vocab, cache_dir(context))
        else:
            _ENCODED[key] = encode_split(cached_partition(src, pid, cache_dir(context)), vocab, src.max_title_words)
    return _ENCODED[key], len(vocab)


def cache_dir(context: Context) -> Path:
    configured = str(context.node_config.get("cache-dir", ""))
    return Path(configured).expanduser() if configured else default_cache_dir()


def input_shape(settings: Settings, data: ClientData) -> tuple[int, ...] | None:
    """The CNN's (channels, height, width): this client's images' (the query round checked that all agree)."""
    return tuple(data.x_train.shape[1:]) if settings.source.kind == "image" else None


def load_model(settings: Settings, num_classes: int, arrays: ArrayRecord, width: float,
               shape: tuple[int, ...] | None = None) -> torch.nn.Module:
    model = settings.build(num_classes, width, shape)
    model.load_state_dict(arrays.to_torch_state_dict())
    return model


DEVICES = ("auto", "cpu", "cuda")


def compute_device(context: Context) -> torch.device:
    """Node config ``device``: auto (CUDA when this node has a GPU, else CPU), cpu or cuda. In
    simulation, Ray gives an actor a GPU when the federation config has client-resources-num-gpus."""
    choice = str(context.node_config.get("device", "auto"))
    if choice not in DEVICES:
        raise ValueError(f"unknown node config device '{choice}': choose one of {', '.join(DEVICES)}")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("node config device=cuda but this device has no usable CUDA GPU: use device=auto or cpu")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def node_cap(context: Context) -> float | None:
    """The SuperNode's own max-width (None: not set). Outside (0, 1] the device would refuse every
    model, or claim more than the supernet, so that is this device's configuration error."""
    if "max-width" not in context.node_config:
        return None
    cap = float(context.node_config["max-width"])
    if not 0.0 < cap <= 1.0:
        raise ValueError(f"node config max-width={cap:g} is outside (0, 1]: set it to the widest fraction of the "
                         "supernet this device can train, e.g. 0.5, or leave it out")
    return cap


def checked_width(context: Context, width: float) -> float:
    """A device never builds a model wider than its own cap: a misconfigured server gets an error
    that names the cap, not an out-of-memory device."""
    cap = node_cap(context) or 1.0
    if width > cap + 1e-9:
        raise ValueError(f"this device's max-width is {cap:g} but the server sent a width-{width:g} model: the device "
                         "refuses it; check the server's allocation and the device's max-width")
    return width


def own_split(settings: Settings, context: Context):
    """This client's cleaned, split titles, from the node's cache (see data/cache.py)."""
    pid, path, name = node_identity(settings, context)
    if pid == LOCAL:
        return cached_split(settings.source, path, name, cache_dir(context))
    return cached_partition(settings.source, pid, cache_dir(context))


def query_vocab(msg: Message, context: Context) -> Message:
    """The vocabulary round: this client's training word counts (nothing else of its data). Under
    secure-stats only its number of training words, which bounds its counts for the secure sum."""
    settings = settings_from_run_config(context.run_config)
    split = own_split(settings, context)
    counts = split.word_counts()
    if settings.secure_stats:
        return Message(RecordDict({"sizes": MetricRecord({"tokens": int(sum(counts.values()))})}), reply_to=msg)
    words = sorted(counts)
    return Message(RecordDict({"info": ConfigRecord({"name": split.name, "words": words}),
                               "counts": MetricRecord({"counts": [int(counts[w]) for w in words]})}), reply_to=msg)


def query_stats(msg: Message, context: Context) -> Message:
    """Sizes, label counts and cap (images: also the shape and which class list); first stores the
    agreed vocabulary the server sent."""
    settings = settings_from_run_config(context.run_config)
    expected = None
    if "vocab" in msg.content.config_records:  # text: the hash, and the words unless every party reads vocab-path
        agreed = msg.content["vocab"]
        if "words" in agreed:
            context.state.config_records[VOCAB_STATE] = ConfigRecord({"words": list(agreed["words"])})
        expected = str(agreed["hash"])
    data, num_classes = client_data(settings, context, expected)
    pid, _, _ = node_identity(settings, context)
    node = context.node_config
    stats = MetricRecord({
        "partition-id": pid,
        "num-partitions": int(node.get("num-partitions", settings.num_clients)) if pid != LOCAL else -1,
        "n-train": data.n_train,
        "n-test": data.n_test,
        "n-train-rows": data.n_train_rows,
        "num-classes": num_classes,
        "max-width": node_cap(context) or -1.0,  # -1: not set
    })
    if not settings.secure_stats:  # under secure-stats the histogram leaves only inside a SecAgg+ sum
        stats["label-counts"] = [int(v) for v in data.label_counts(num_classes, settings.score_histogram)]
    info = ConfigRecord({"name": data.name})
    if settings.source.kind == "image":  # the server builds the CNN for this shape; the hash catches other classes
        stats["input-shape"] = [int(v) for v in input_shape(settings, data)]
        info["classes"] = vocab_hash(list(data.classes))
    return Message(RecordDict({"stats": stats, "info": info}), reply_to=msg)


def _data_for(msg: Message, context: Context) -> tuple[Settings, ClientData, int]:
    settings = settings_from_run_config(context.run_config)
    cfg = msg.content["config"]
    checked_width(context, float(cfg["width"]))
    if bool(cfg.get("full-width", False)):
        checked_width(context, 1.0)
    expected = expected_vocab(cfg)
    data, num_classes = client_data(settings, context, expected)
    return settings, data, num_classes


def query_score(msg: Message, context: Context) -> Message:
    """secure-stats: this client's own score from its own histogram (jsd: against the pooled one the
    server sent); only the scalar goes back."""
    settings = settings_from_run_config(context.run_config)
    cfg = msg.content["config"]
    data, num_classes = client_data(settings, context, expected_vocab(cfg))
    own = data.label_counts(num_classes, settings.score_histogram)[None, :]
    if str(cfg["score"]) == "jsd":
        score = jsd_to_pooled(own, np.asarray(msg.content["pooled"]["counts"], dtype=np.int64))[0]
    elif str(cfg["score"]) == "entropy":
        score = entropy_scores(own)[0]
    else:
        raise ValueError(f"score '{cfg['score']}' is not computed by the client: use jsd or entropy")
    return Message(RecordDict({"metrics": MetricRecord({"score": float(score)})}), reply_to=msg)


def secure_statistics_mod(msg: Message, context: Context, call_next) -> Message:
    """Flower's secaggplus_mod on the train handler, for the secure statistics rounds only: an
    ordinary train message (no SecAgg+ configs) passes straight to training."""
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    if RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, context)
    from flwr.client.mod import secaggplus_mod  # only these rounds pay for the cryptography imports

    return secaggplus_mod(msg, context, secure_contribution)


def secure_contribution(msg: Message, context: Context) -> Message:
    """This client's count vector divided by the server's public bound, as the FitRes SecAgg+
    masks: its word counts over the candidate words, or its label histogram."""
    import flwr.compat.common.recorddict_compat as compat
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

    settings = settings_from_run_config(context.run_config)
    if not settings.secure_stats:
        raise ValueError("this client got a secure statistics round but its run config has secure-stats off")
    cfg = msg.content.config_records["fitins.config"]
    what, scale = str(cfg["hasa-secure"]), float(cfg["scale"])
    if what == "vocab":
        candidates = read_candidates(resolve_path(settings.vocab_candidates, "vocab-candidates"))
        if vocab_hash(candidates) != str(cfg["candidates-hash"]):
            raise DataError("this device's vocab-candidates file differs from the server's: give every party the "
                            "same file")
        split = own_split(settings, context)
        counts, name = split.word_counts(), split.name
        vector = np.array([counts.get(w, 0) for w in candidates], dtype=np.float64)
    elif what == "labels":
        data, num_classes = client_data(settings, context, expected_vocab(cfg))
        vector, name = data.label_counts(num_classes, settings.score_histogram).astype(np.float64), data.name
    else:
        raise ValueError(f"unknown secure statistic '{what}'")
    if vector.max(initial=0.0) > scale:
        raise ValueError(f"a count ({vector.max():.0f}) exceeds the secure round's bound ({scale:g}): the server's "
                         "bound is wrong")
    # SecAgg+ quantises stochastically with the global np.random: seeded, the run is reproducible
    np.random.seed(hash_seed(settings.seed, zlib.crc32(what.encode()), zlib.crc32(name.encode())) % 2**32)
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([vector / scale]), num_examples=1, metrics={})
    return Message(compat.fitres_to_recorddict(fitres, False), reply_to=msg)


def expected_vocab(cfg: ConfigRecord) -> str | None:
    """The vocabulary hash a message names (text), so a device with another vocabulary is caught."""
    return str(cfg["vocab-hash"]) if "vocab-hash" in cfg else None


def query_loss(msg: Message, context: Context) -> Message:
    settings, data, num_classes = _data_for(msg, context)
    model = load_model(settings, num_classes, msg.content["arrays"], float(msg.content["config"]["width"]),
                       input_shape(settings, data))
    loss = evaluate(model, data.x_train, data.y_train, device=compute_device(context))["loss"]
    return Message(RecordDict({"metrics": MetricRecord({"loss": loss})}), reply_to=msg)


def train_subnet(msg: Message, context: Context) -> Message:
    start = time.perf_counter()  # the device's share of the round, reported so a slow round can be placed
    settings, data, num_classes = _data_for(msg, context)
    cfg = msg.content["config"]
    width, shape = float(cfg["width"]), input_shape(settings, data)
    model = load_model(settings, num_classes, msg.content["arrays"], width, shape)
    device = compute_device(context)
    evaluated = {}
    if bool(cfg.get("evaluate-first", False)):  # one exchange per round: last round's model, as received
        evaluated = {f"eval-{k}": v for k, v in test_metrics(model, data, device).items()}
    ordered = None
    if bool(cfg["ordered"]):
        ordered = OrderedDropout(settings.model, num_classes, settings.sizes, width, scaler=settings.scaler,
                                 input_shape=shape)
    loss = train(model, data.x_train, data.y_train, epochs=settings.local_epochs, batch_size=settings.batch_size,
                 lr=settings.lr, optimizer=settings.optimizer, momentum=settings.momentum,
                 seed=int(cfg["train-seed"]), ordered=ordered, device=device)
    metrics = MetricRecord({"num-examples": data.n_train, "train-loss": loss, **evaluated,
                            "seconds": time.perf_counter() - start})
    return Message(RecordDict({"arrays": ArrayRecord(model.to("cpu").state_dict()), "metrics": metrics}),
                   reply_to=msg)


def test_metrics(model: torch.nn.Module, data: ClientData, device: torch.device | str = "cpu") -> dict[str, float]:
    """What the server records per client and round: the model's accuracy on this client's test split."""
    result = evaluate(model, data.x_test, data.y_test, device=device)
    return {"num-examples": data.n_test, "accuracy": result["accuracy"], "top3": result["top3"],
            "loss": result["loss"], "majority": data.majority_accuracy()}


def evaluate_subnet(msg: Message, context: Context) -> Message:
    settings, data, num_classes = _data_for(msg, context)
    cfg = msg.content["config"]
    shape = input_shape(settings, data)  # the server sent only this client's width-w subnet
    device = compute_device(context)
    metrics = test_metrics(load_model(settings, num_classes, msg.content["arrays"], float(cfg["width"]), shape), data,
                           device)
    if bool(cfg["full-width"]):
        metrics["full-width-accuracy"] = evaluate(load_model(settings, num_classes, msg.content["full"], 1.0, shape),
                                                  data.x_test, data.y_test, device=device)["accuracy"]
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


def default_model_dir() -> Path:
    """Where a device keeps its subnets unless its node config says ``model-dir``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "hasa-flwr" / "models"


def store_subnet(msg: Message, context: Context) -> Message:
    """After the last round: keep this device's own subnet, so it can predict with no server."""
    cfg = msg.content["config"]
    width = checked_width(context, float(cfg["width"]))
    meta = json.loads(str(cfg["meta"]))
    if abs(float(meta["width"]) - width) > 1e-12:
        raise ValueError(f"the subnet's metadata says width {meta['width']} but the message width {width}")
    root = Path(str(context.node_config.get("model-dir", ""))).expanduser() if context.node_config.get("model-dir") \
        else default_model_dir()
    folder = save_model(root / f"run-{int(cfg['run-id'])}", msg.content["arrays"].to_torch_state_dict(), meta)
    return Message(RecordDict({"info": ConfigRecord({"path": str(folder)})}), reply_to=msg)
