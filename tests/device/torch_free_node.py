"""A device node for tests, in a process where ``import torch`` fails.

Reads Flower messages (protobuf, each prefixed by its u32 little-endian length) on stdin,
answers each through ``fedtune.app.client_app.app`` (the ClientApp every SuperNode of a mixed
federation runs; it hands device partitions to ``fedtune.app.device_app``) and writes the reply
the same way; a zero length ends it. argv[1]: JSON ``{node id: partition id}``; argv[2]: num-partitions.
The run's config and run directory come from FEDTUNE_CONFIG / FEDTUNE_RUN_DIR.
"""

import sys

sys.modules["torch"] = None  # type: ignore[assignment]  # from here on `import torch` raises ImportError

import json
import struct

from flwr.app import Context, RecordDict

from fedtune._flwr_compat import ProtoMessage, message_from_proto, message_to_proto, set_task_identity
from fedtune.app.client_app import app

_LENGTH = struct.Struct("<I")


def _read(stream):
    (size,) = _LENGTH.unpack(stream.read(_LENGTH.size))
    return stream.read(size) if size else None


def main() -> None:
    partitions = {int(k): v for k, v in json.loads(sys.argv[1]).items()}
    num_partitions = int(sys.argv[2])
    contexts = {
        node: Context(run_id=1, node_id=node, node_config={"partition-id": pid, "num-partitions": num_partitions},
                      state=RecordDict(), run_config={})
        for node, pid in partitions.items()
    }
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while (payload := _read(stdin)) is not None:
        message = message_from_proto(ProtoMessage.FromString(payload))
        node = message.metadata.dst_node_id
        set_task_identity(run_id=1, node_id=node, task_id=1)
        reply = message_to_proto(app(message, contexts[node])).SerializeToString()
        stdout.write(_LENGTH.pack(len(reply)) + reply)
        stdout.flush()
    loaded = sorted(m for m in ("torch", "transformers", "onnxruntime") if sys.modules.get(m) is not None)
    print(json.dumps({"loaded": loaded}), file=sys.stderr)


if __name__ == "__main__":
    main()
