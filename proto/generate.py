"""Regenerate fedtune/_proto/ from proto/*.proto with grpcio-tools (the `test` extra has it).

    python proto/generate.py            # rewrite fedtune/_proto/
    python proto/generate.py --check    # exit 1 if the committed code is not what protoc gives

The generated code is committed so that an install needs only the protobuf runtime (a
torch-free device has no grpcio-tools); tests/test_proto.py runs --check.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
OUT_DIR = PROTO_DIR.parent / "fedtune" / "_proto"
GENERATED = ("fedtune_wire_pb2.py", "fedtune_wire_pb2.pyi")


def generate(out_dir: Path) -> None:
    from grpc_tools import protoc

    protos = sorted(str(p) for p in PROTO_DIR.glob("*.proto"))
    code = protoc.main(["protoc", f"-I{PROTO_DIR}", f"--python_out={out_dir}", f"--pyi_out={out_dir}", *protos])
    if code != 0:
        raise SystemExit(f"protoc failed with exit status {code}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    if not args.check:
        generate(OUT_DIR)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        stale = [n for n in GENERATED if (Path(tmp) / n).read_bytes() != (OUT_DIR / n).read_bytes()]
    if stale:
        print(f"fedtune/_proto is stale ({', '.join(stale)}): run python proto/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
