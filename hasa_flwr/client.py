"""What a client does with each message: answer the query round, train its subnet, evaluate.

The ClientApp in client_app.py only routes messages here. A client reads the same run config as
the server (so both derive identical model sizes) and its own node config: `partition-id`,
`num-partitions`, and in deployment `data-path`, `max-width` (device cap) and `threads`.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from .config import Settings, settings_from_run_config
from .data import ClientData
from .train import OrderedDropout, evaluate, train


def setup(context: Context) -> tuple[Settings, ClientData, int, int]:
    """Settings, this node's data, its partition id and the number of classes."""
    settings = settings_from_run_config(context.run_config)
    node = context.node_config
    if "threads" in node:
        torch.set_num_threads(int(node["threads"]))
    pid = int(node["partition-id"])
    if not 0 <= pid < settings.num_clients:
        raise ValueError(f"partition-id {pid} is outside 0..{settings.num_clients - 1}: check the SuperNode's "
                         "node config and num-clients")
    fed = settings.load_data(str(node.get("data-path", settings.data_path)))
    return settings, fed.clients[pid], pid, fed.num_classes


def load_model(settings: Settings, num_classes: int, arrays: ArrayRecord, width: float) -> torch.nn.Module:
    model = settings.build(num_classes, width)
    model.load_state_dict(arrays.to_torch_state_dict())
    return model


def prefix_model(settings: Settings, num_classes: int, arrays: ArrayRecord, width: float) -> torch.nn.Module:
    """The deployable width-``width`` prefix of a full supernet."""
    return settings.prefix_of(load_model(settings, num_classes, arrays, 1.0), num_classes, width)


def query_stats(msg: Message, context: Context) -> Message:
    settings, data, pid, num_classes = setup(context)
    node = context.node_config
    stats = MetricRecord({
        "partition-id": pid,
        "num-partitions": int(node.get("num-partitions", settings.num_clients)),
        "n-train": data.n_train,
        "n-test": data.n_test,
        "num-classes": num_classes,
        "label-counts": [int(v) for v in data.label_counts(num_classes)],
        "max-width": float(node.get("max-width", -1.0)),
    })
    return Message(RecordDict({"stats": stats, "info": ConfigRecord({"name": data.name})}), reply_to=msg)


def query_loss(msg: Message, context: Context) -> Message:
    settings, data, _, num_classes = setup(context)
    model = prefix_model(settings, num_classes, msg.content["arrays"], float(msg.content["config"]["width"]))
    loss = evaluate(model, data.x_train, data.y_train)["loss"]
    return Message(RecordDict({"metrics": MetricRecord({"loss": loss})}), reply_to=msg)


def train_subnet(msg: Message, context: Context) -> Message:
    settings, data, _, num_classes = setup(context)
    cfg = msg.content["config"]
    width = float(cfg["width"])
    model = load_model(settings, num_classes, msg.content["arrays"], width)
    ordered = None
    if bool(cfg["ordered"]):
        ordered = OrderedDropout(settings.model, num_classes, settings.sizes, width, scaler=settings.scaler)
    loss = train(model, data.x_train, data.y_train, epochs=settings.local_epochs, batch_size=settings.batch_size,
                 lr=settings.lr, optimizer=settings.optimizer, momentum=settings.momentum,
                 seed=int(cfg["train-seed"]), ordered=ordered)
    metrics = MetricRecord({"num-examples": data.n_train, "train-loss": loss})
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg)


def evaluate_subnet(msg: Message, context: Context) -> Message:
    settings, data, _, num_classes = setup(context)
    cfg = msg.content["config"]
    arrays = msg.content["arrays"]
    result = evaluate(prefix_model(settings, num_classes, arrays, float(cfg["width"])), data.x_test, data.y_test)
    metrics = {"num-examples": data.n_test, "accuracy": result["accuracy"], "top3": result["top3"],
               "loss": result["loss"]}
    if bool(cfg["full-width"]):
        metrics["full-width-accuracy"] = evaluate(load_model(settings, num_classes, arrays, 1.0),
                                                  data.x_test, data.y_test)["accuracy"]
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
