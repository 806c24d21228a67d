"""Regenerate grpc_service_pb2.py / grpc_service_pb2_grpc.py from grpc_service.proto.

Run at dev time only (`python -m server.proto.generate`); serving imports the committed
modules and needs just grpcio + protobuf. Generated with grpcio-tools 1.81.1 (protobuf 6.x
runtime). Two edits follow protoc, both mechanical:
- the messages go into a private descriptor pool: tritonclient registers its own
  `grpc_service.proto` (package `inference`, more messages) in the default pool, and a process
  that imports both (a test, an app that embeds a client) would otherwise fail with a
  duplicate-file error;
- the service module imports the message module relative to this package.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = "grpc_service.proto"


def generate(out_dir: Path = HERE) -> list[Path]:
    from grpc_tools import protoc

    args = ["protoc", f"-I{HERE}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", PROTO]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {HERE / PROTO}")
    pb2, grpc_mod = out_dir / "grpc_service_pb2.py", out_dir / "grpc_service_pb2_grpc.py"
    text = pb2.read_text()
    default_pool = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
    if default_pool not in text:
        raise RuntimeError("protoc output changed: no default-pool registration to rewrite")
    text = text.replace(
        default_pool,
        "_POOL = _descriptor_pool.DescriptorPool()  # private: see server/proto/generate.py\n"
        "DESCRIPTOR = _POOL.AddSerializedFile(",
    )
    pb2.write_text(text)
    text = grpc_mod.read_text()
    absolute = "import grpc_service_pb2 as grpc__service__pb2"
    if absolute not in text:
        raise RuntimeError("protoc output changed: no absolute import to rewrite")
    grpc_mod.write_text(text.replace(absolute, "from . import grpc_service_pb2 as grpc__service__pb2"))
    return [pb2, grpc_mod]


if __name__ == "__main__":
    for p in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
        print(p)
