"""Python gRPC stubs for TorchServe 0.12's inference APIs, compiled at run time from the protos inside TorchServe's
own frontend jar (so they always match the installed server; nothing generated is kept in the repository). Needs
grpcio and grpcio-tools (``pip install torchserve-accel[grpc]``); the load generator's ``--transport grpc`` and the
gRPC tests use them.

    stubs = compile_stubs(tmp_dir)
    channel = grpc.insecure_channel("127.0.0.1:7070")
    inference = stubs.inference_grpc.InferenceAPIsServiceStub(channel)
    answer = inference.Predictions(stubs.inference.PredictionsRequest(model_name="resnet101", input={"data": jpeg}),
                                   metadata=bearer(key))
"""

from __future__ import annotations

import importlib
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

PROTOS = ("inference.proto", "open_inference_grpc.proto")


def frontend_jar() -> Path:
    """TorchServe's frontend jar (``ts/frontend/model-server.jar`` of the installed ``torchserve`` package)."""
    import ts

    return Path(ts.__file__).resolve().parent / "frontend" / "model-server.jar"


@dataclass(frozen=True)
class Stubs:
    inference: ModuleType  # inference_pb2: PredictionsRequest, PredictionResponse, TorchServeHealthResponse
    inference_grpc: ModuleType  # inference_pb2_grpc: InferenceAPIsServiceStub (Ping, Predictions, ...)
    open_inference: ModuleType  # open_inference_grpc_pb2: ModelInferRequest, ModelInferResponse, ...
    open_inference_grpc: ModuleType  # open_inference_grpc_pb2_grpc: GRPCInferenceServiceStub (ModelInfer, ...)


def compile_stubs(out_dir: Path, jar: Path | None = None) -> Stubs:
    """Extract the jar's protos (and the google/rpc protos they import) into ``out_dir``, compile them with
    grpc_tools.protoc, put ``out_dir`` on ``sys.path`` and import the generated modules."""
    from grpc_tools import protoc

    out_dir = Path(out_dir)
    sources = out_dir / "proto"
    with zipfile.ZipFile(jar or frontend_jar()) as archive:
        for name in archive.namelist():
            if name in PROTOS or (name.startswith("google/rpc/") and name.endswith(".proto")):
                archive.extract(name, sources)
    # google/protobuf/*.proto (empty.proto, any.proto) come with grpc_tools, matching its protoc.
    well_known = Path(protoc.__file__).resolve().parent / "_proto"
    args = ["grpc_tools.protoc", f"-I{sources}", f"-I{well_known}", f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}", *PROTOS, "google/rpc/status.proto"]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    return import_stubs(out_dir)


def import_stubs(out_dir: Path) -> Stubs:
    """The modules ``compile_stubs`` generated into ``out_dir`` (already imported ones as they are)."""
    out_dir = Path(out_dir)
    if str(out_dir) not in sys.path:
        sys.path.insert(0, str(out_dir))  # the generated modules import each other (and google.rpc) by name
    importlib.invalidate_caches()
    return Stubs(*(importlib.import_module(name) for name in
                   ("inference_pb2", "inference_pb2_grpc", "open_inference_grpc_pb2", "open_inference_grpc_pb2_grpc")))


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    """gRPC call metadata for TorchServe's token auth: the key as ``authorization: Bearer <key>``."""
    return (("authorization", f"Bearer {key}"),)
