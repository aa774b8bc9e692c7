"""The load generator's gRPC client: TorchServe's ``Predictions`` call (inference.proto) through grpc.aio, with the
requests serialized once by the parent and sent as they are, so a load process builds no message per request.

A payload travels as ``input={"data": body}``; several images of one request as ``input={"0": ..., "1": ...}``,
named by their index because a protobuf map keeps no order on the wire (the handlers answer such entries in the
numbers' order). The key goes in the call metadata (``grpc_stubs.bearer``).

Statuses for the records: gRPC OK is 200, unless the answer's ``prediction`` is one of our handlers' refusals
``{"error": ..., "status": 4xx}`` (TorchServe drops a handler's status on gRPC: docs/grpc.md), then that status;
DEADLINE_EXCEEDED is a timeout, UNAVAILABLE a connection error, any other code ``stats.STATUS_GRPC`` - its number.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import grpc
from google.protobuf.message import DecodeError

from torchserve_accel.tools.grpc_stubs import Stubs, import_stubs
from torchserve_accel.tools.loadgen.payloads import Payload
from torchserve_accel.tools.loadgen.stats import STATUS_CONNECTION, STATUS_GRPC, STATUS_TIMEOUT

PREDICTIONS = "/org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Channels per load process, each its own HTTP/2 connection, handed to the loops' connections in turn: the
# frontend's Netty server reads each connection on one event-loop thread, and one connection's flow-control
# window is shared by every call on it, so a single channel could limit a process that HTTP/1.1 would not.
CHANNELS = 4
CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class GrpcTarget:
    """What a load process needs to speak gRPC, besides the host, the port and the prebuilt requests."""

    stubs_dir: str  # the compiled stubs (``grpc_stubs.compile_stubs``): a spawned process imports them from here
    metadata: tuple[tuple[str, str], ...] = ()  # ``grpc_stubs.bearer(key)``; empty without token auth
    channels: int = CHANNELS


def request_input(payload: Payload) -> dict[str, bytes]:
    """The ``input`` map of a payload's ``PredictionsRequest``: its images as entries "0", "1", ..., else "data"."""
    if payload.items:
        return {str(index): item for index, item in enumerate(payload.items)}
    return {"data": payload.body}


def prebuilt_requests(stubs: Stubs, model: str, payloads: Sequence[Payload]) -> list[bytes]:
    """Each payload as a serialized ``PredictionsRequest`` for ``model``."""
    request = stubs.inference.PredictionsRequest
    return [request(model_name=model, input=request_input(p)).SerializeToString() for p in payloads]


def answer_status(response: bytes, response_type: Any) -> int:
    """A serialized ``PredictionResponse`` -> 200, or the status of a refusal in its ``prediction`` (an error
    without a status counts as 500). Only an answer whose bytes hold ``"error"`` is parsed."""
    if b'"error"' not in response:
        return 200
    try:
        body = json.loads(response_type.FromString(response).prediction)
    except DecodeError:
        return STATUS_CONNECTION  # not a PredictionResponse: as unreadable as a garbled HTTP answer
    except ValueError:
        return 200  # a prediction that is not JSON is no refusal of ours
    if isinstance(body, dict) and "error" in body:
        status = body.get("status")
        return status if type(status) is int else 500
    return 200


def code_status(code: grpc.StatusCode) -> int:
    """The record's status for a call that failed with ``code``."""
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return STATUS_TIMEOUT
    if code == grpc.StatusCode.UNAVAILABLE:
        return STATUS_CONNECTION
    return STATUS_GRPC - code.value[0]


class GrpcChannels:
    """One load process's channels, opened inside its event loop, and the connections that share them."""

    def __init__(self, host: str, port: int, target: GrpcTarget):
        self.response_type = import_stubs(Path(target.stubs_dir)).inference.PredictionResponse
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.use_local_subchannel_pool", 1)]  # else channels to one address share one connection
        self.channels = [grpc.aio.insecure_channel(address, options=options) for _ in range(max(1, target.channels))]
        # request and response pass through as bytes: no (de)serializer
        self.calls = [channel.unary_unary(PREDICTIONS, request_serializer=None, response_deserializer=None)
                      for channel in self.channels]
        self.metadata = target.metadata
        self.handed_out = 0

    def connection(self) -> GrpcConnection:
        k = self.handed_out % len(self.channels)
        self.handed_out += 1
        return GrpcConnection(self.channels[k], self.calls[k], self.metadata, self.response_type)

    async def close(self) -> None:
        await asyncio.gather(*(channel.close() for channel in self.channels))


class GrpcConnection:
    """``http.Connection``'s interface on a shared channel: many of these have calls in flight on one channel."""

    def __init__(self, channel: grpc.aio.Channel, call: Any, metadata: tuple[tuple[str, str], ...],
                 response_type: Any):
        self.channel, self.call, self.metadata, self.response_type = channel, call, metadata, response_type

    async def connect(self) -> None:
        await asyncio.wait_for(self.channel.channel_ready(), timeout=CONNECT_TIMEOUT_S)

    def close(self) -> None:
        """Nothing of its own to close: the channel is the process's (``GrpcChannels.close``)."""

    async def send(self, raw: bytes, timeout: float) -> int:
        """200, a refusal's status (``answer_status``), or the failed call's (``code_status``)."""
        try:
            response = await self.call(raw, timeout=max(timeout, 0.001), metadata=self.metadata)
        except grpc.aio.AioRpcError as err:
            return code_status(err.code())
        return answer_status(response, self.response_type)
