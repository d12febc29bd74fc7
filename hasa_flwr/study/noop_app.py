"""The no-op Flower app `hasa bench deploy` measures Flower's own floor with: rounds of one message per
device whose ClientApp imports only Flower and answers at once.

`write_noop_app` copies this file into an app folder as `noop_app.py` (next to a generated
pyproject.toml), so on a device its ClientApp process imports nothing from hasa-flwr: what a round
of it costs is the polling and the per-message process start alone. Its ServerApp sends the same
pattern as hasa-flwr's rounds (one train message per device, replies pulled at `reply-poll`) and
writes the seconds of each round to <results-dir>/<run id>/results.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

PYPROJECT = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "hasa-noop"
version = "1.0.0"
description = "hasa bench deploy: Flower's floor (a ClientApp that answers at once)"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "hasa-flwr"

[tool.flwr.app.components]
serverapp = "noop_app:server"
clientapp = "noop_app:client"

[tool.flwr.app.config]
num-server-rounds = 5
num-clients = 3
reply-poll = 0.2
wait-seconds = 120.0
results-dir = "results"
"""

client = ClientApp()
server = ServerApp()


@client.train()
def answer(msg: Message, context: Context) -> Message:
    return Message(RecordDict({"metrics": MetricRecord({"round": int(msg.content["config"]["round"])})}),
                   reply_to=msg)


@server.main()
def rounds(grid: Grid, context: Context) -> None:
    # the server side only (its ClientApp stays Flower-only): poll and wait for devices as hasa-flwr does
    from hasa_flwr.federation.polling import prompt
    from hasa_flwr.federation.strategy import wait_for_nodes

    rc = context.run_config
    grid = prompt(grid, float(rc["reply-poll"]))
    nodes = wait_for_nodes(grid, int(rc["num-clients"]), float(rc["wait-seconds"]))
    seconds = []
    for r in range(1, int(rc["num-server-rounds"]) + 1):
        start = time.perf_counter()
        messages = [Message(RecordDict({"config": ConfigRecord({"round": r})}), dst_node_id=node,
                            message_type=MessageType.TRAIN, group_id=str(r)) for node in nodes]
        replies = list(grid.send_and_receive(messages, timeout=600))
        if len(replies) != len(nodes) or any(m.has_error() for m in replies):
            raise RuntimeError(f"round {r}: {len(replies)} of {len(nodes)} replies, errors "
                               f"{[m.error.reason for m in replies if m.has_error()]}")
        seconds.append(time.perf_counter() - start)
    out = Path(str(rc["results-dir"])) / str(context.run_id)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"history": [{"round": r + 1, "seconds": s}
                                                              for r, s in enumerate(seconds)]}))


def write_noop_app(folder: Path) -> Path:
    """An app folder holding this module as `noop_app.py` and its pyproject.toml."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(PYPROJECT)
    (folder / "noop_app.py").write_text(Path(__file__).read_text())
    return folder
