"""An in-process federation: a Flower ``Grid`` that hands each message to a ClientApp in this process.

For benchmarks and tests of the server's phases with the real ClientApp handlers and mods (SecAgg+
included) but no SuperLink, Ray or processes. Messages travel as Flower's protobuf, as over the
network (so no party shares an object with another, and ``bytes`` counts what a link carries).
Every reply is kept in ``received``: exactly what a server would receive, so a test can check what
a client revealed. Not for training runs (use ``flwr run``): it is sequential, in one process.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterable
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

SERVER_NODE = 1


class LoopbackGrid(Grid):
    """``nodes``: node id -> that node's node config. ``drop``: (message, node) -> True makes the
    node vanish from then on (no reply, as a device that died)."""

    def __init__(self, client_app: Callable[[Message, Context], Message], run_config: dict,
                 nodes: dict[int, dict], run_id: int = 1,
                 drop: Callable[[Message, int], bool] | None = None) -> None:
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, SERVER_NODE, 0
        self.app, self.run_id, self.drop = client_app, run_id, drop
        self.contexts = {n: Context(run_id, n, dict(cfg), RecordDict(), dict(run_config)) for n, cfg in nodes.items()}
        self.dead: set[int] = set()
        self.received: list[tuple[str, int, Message]] = []  # (message type, node, reply)
        self.sent: list[tuple[str, int, Message]] = []
        self.bytes: dict[str, int] = {}  # message type -> bytes carried, both directions
        self.exchanges = 0               # send_and_receive calls: in deployment each costs a polling cycle

    @property
    def run(self):
        raise NotImplementedError("the loopback grid has no Run object")

    def set_run(self, run_id: int) -> None:
        self.run_id = run_id

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self.contexts if n not in self.dead]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError("use send_and_receive")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError("use send_and_receive")

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        self.exchanges += 1
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())
            msg = self.transport(msg)
            node = msg.metadata.dst_node_id
            self.sent.append((msg.metadata.message_type, node, msg))
            if node in self.dead or (self.drop is not None and self.drop(msg, node)):
                self.dead.add(node)
                continue
            TaskIdentity.node_id = node
            try:
                reply = self.app(msg, self.contexts[node])
            except Exception as err:  # noqa: BLE001  (a device's failure is its reply, as in Flower)
                reason = "".join(traceback.format_exception_only(type(err), err))
                reply = Message(Error(code=0, reason=reason), reply_to=msg)
            finally:
                TaskIdentity.node_id = SERVER_NODE
            reply.metadata.__dict__["_message_id"] = str(uuid4())
            reply = self.transport(reply)
            self.received.append((msg.metadata.message_type, node, reply))
            replies.append(reply)
        return replies

    def transport(self, msg: Message) -> Message:
        """The message as the other side gets it: serialised and parsed, its bytes counted."""
        proto = message_to_proto(msg)
        kind = msg.metadata.message_type
        self.bytes[kind] = self.bytes.get(kind, 0) + proto.ByteSize()
        return message_from_proto(proto)
