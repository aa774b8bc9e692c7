"""Unit tests of the load generator's maths and parsers (torchserve_accel/tools/loadgen/) and the sweep's reports
(tools/sweep.py): percentiles and window summaries, Prometheus text, HTTP response heads, payloads, the keep-alive
client against a tiny local server, gRPC requests, statuses and client against a local grpc.aio server, best-point
choice and combined reports. Fast, no TorchServe."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random

import pytest

from torchserve_accel.tools import sweep
from torchserve_accel.tools.cli import build_parser
from torchserve_accel.tools.endpoints import TorchServeAt
from torchserve_accel.tools.launch import TorchServeError, free_ports
from torchserve_accel.tools.loadgen import driver, http, payloads, probes, stats
from torchserve_accel.tools.loadgen.stats import Records, percentile
from torchserve_accel.tools.prometheus import Sample, metric_sum
from torchserve_accel.tools.prometheus import parse_samples as parse_prometheus


# ---------------------------------------------------------------------------------------------- statistics


def test_percentile_matches_linear_interpolation():
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 4.0
    assert percentile(values, 50) == 2.5  # numpy.percentile([1,2,3,4], 50)
    assert percentile(values, 90) == pytest.approx(3.7)
    assert percentile([5.0], 99) == 5.0
    assert percentile([], 50) is None
    values = sorted(random.Random(0).random() for _ in range(1001))
    assert percentile(values, 99) == pytest.approx(values[990])  # (n-1) * 0.99 = 990 exactly


def test_latency_summary_in_milliseconds():
    summary = stats.latency_summary([0.010, 0.020, 0.030, 0.040, 0.100])
    assert summary == {"count": 5, "mean": 40.0, "p50": 30.0, "p90": pytest.approx(76.0), "p99": pytest.approx(97.6),
                       "max": 100.0}
    assert stats.latency_summary([]) == {"count": 0, "mean": None, "p50": None, "p90": None, "p99": None,
                                           "max": None}


def _records(rows):
    records = Records()
    for start, latency, status in rows:
        records.add(start, latency, status)
    return records


def test_summarize_counts_completions_for_throughput_and_starts_for_latency():
    rows = [
        (9.0, 1.5, 200),   # started in warm-up, completed in the window: throughput only
        (10.0, 0.5, 200),  # inside
        (11.0, 0.2, 503),  # inside, an error
        (12.0, 0.1, stats.STATUS_TIMEOUT),
        (13.5, 1.0, 200),  # started inside, completed after: latency only
        (15.0, 0.1, 200),  # after the window: nothing
    ]
    s = stats.summarize(_records(rows), 10.0, 14.0)
    assert s["window_s"] == 4.0
    assert s["completed"] == 4 and s["throughput_rps"] == 1.0  # 10.5, 10.5, 11.2, 12.1
    assert s["ok_rps"] == 0.5
    assert s["started"] == 4
    assert s["errors"] == {"503": 1, "timeout": 1}
    assert s["error_rate"] == 0.5
    assert s["latency_ms"]["count"] == 4 and s["latency_ms"]["max"] == 1000.0
    assert s["latency_ok_ms"]["count"] == 2 and s["latency_ok_ms"]["p50"] == 750.0


def test_summarize_counts_requests_on_bad_payloads_apart():
    """Requests on a payload marked bad are left out of every other figure: a 4xx for them is the right answer."""
    records = Records()
    for start, latency, status, payload in [(10.0, 0.1, 200, 0), (10.5, 0.1, 415, 1), (11.0, 0.2, 200, 0),
                                            (11.5, 0.1, 400, 2), (12.0, 0.1, 507, 1), (13.0, 0.3, 503, 0),
                                            (9.0, 0.1, 200, 1)]:  # the last one started before the window
        records.add(start, latency, status, payload)
    s = stats.summarize(records, 10.0, 14.0, bad=[False, True, True])
    assert s["started"] == 3 and s["completed"] == 3 and s["errors"] == {"503": 1}
    assert s["latency_ms"]["count"] == 3 and s["latency_ok_ms"]["count"] == 2
    assert s["bad_inputs"] == {"started": 3, "answers": {"400": 1, "415": 1, "507": 1}, "not_4xx": 1}
    assert "bad_inputs" not in stats.summarize(records, 10.0, 14.0)  # nothing marked: every request is counted
    assert stats.summarize(records, 10.0, 14.0)["errors"] == {"400": 1, "415": 1, "503": 1, "507": 1}
    assert [stats.is_4xx(s) for s in (400, "422", "499", 200, "507", "timeout")] == [True] * 3 + [False] * 3


def test_summarize_refuses_an_empty_window():
    with pytest.raises(ValueError, match="empty measurement window"):
        stats.summarize(Records(), 5.0, 5.0)


def test_split_spreads_the_remainder():
    assert stats.split(10, 4) == [3, 3, 2, 2]
    assert stats.split(3, 4) == [1, 1, 1, 0]
    assert sum(stats.split(1023, 8)) == 1023


# ---------------------------------------------------------------------------------------------- Prometheus

TORCHSERVE_METRICS = """\
# HELP HandlerBatches Torchserve prometheus counter metric with unit: Count
# TYPE HandlerBatches counter
HandlerBatches{ModelName="resnet101",Level="Model",Hostname="gpu-1",} 918.0
HandlerBatches{ModelName="echo",Level="Model",Hostname="gpu-1",} 3.0
# HELP HandlerBatchedRequests Torchserve prometheus counter metric with unit: Count
# TYPE HandlerBatchedRequests counter
HandlerBatchedRequests{ModelName="resnet101",Level="Model",Hostname="gpu-1",} 7344.0
# TYPE ts_inference_requests_total counter
ts_inference_requests_total{model_name="resnet101",model_version="default",hostname="gpu-1",} 7331.0
ts_queue_latency_microseconds{model_name="resnet101",model_version="default",hostname="gpu-1",} 2.5e+07
WorkerThreadTime{Level="Host",Hostname="gpu-1",} 1.0
"""


def test_parse_prometheus_torchserve_text():
    samples = parse_prometheus(TORCHSERVE_METRICS)
    assert len(samples) == 6
    # prometheus_client names a counter's samples NAME_total; metric_sum finds them under NAME
    assert samples[0] == Sample("HandlerBatches_total",
                                {"ModelName": "resnet101", "Level": "Model", "Hostname": "gpu-1"}, 918.0)
    assert metric_sum(samples, "HandlerBatches") == 921.0
    assert metric_sum(samples, "HandlerBatches", ModelName="resnet101") == 918.0
    assert metric_sum(samples, "HandlerBatches", ModelName="nope") is None
    assert metric_sum(samples, "ts_inference_requests_total", model_name="resnet101") == 7331.0
    assert metric_sum(samples, "ts_queue_latency_microseconds", model_name="resnet101") == 2.5e7
    assert metric_sum(samples, "Missing") is None
    from torchserve_accel.tools.prometheus import metric_total

    assert metric_total(TORCHSERVE_METRICS, "HandlerBatchedRequests", ModelName="resnet101") == 7344.0
    assert metric_total(TORCHSERVE_METRICS, "Missing") == 0.0


def test_parse_prometheus_edge_cases():
    text = (
        'a_total{path="C:\\\\dir",quote="say \\"hi\\"",nl="x\\ny"} 3 1700000000000\n'
        "b NaN\n"
        "c{} +Inf\n"
        "  d_seconds  -1.5e-3  \n"
    )
    samples = {s.name: s for s in parse_prometheus(text)}
    assert samples["a_total"].labels == {"path": "C:\\dir", "quote": 'say "hi"', "nl": "x\ny"}
    assert samples["a_total"].value == 3.0  # the timestamp is not the value
    assert samples["b"].value != samples["b"].value  # NaN
    assert samples["c"].value == float("inf") and samples["c"].labels == {}
    assert samples["d_seconds"].value == -1.5e-3
    # counters exported as NAME_total are found under NAME
    assert metric_sum(parse_prometheus(text), "a") == 3.0
    for broken in ("this is not a sample\n", "e{broken 1\n"):
        with pytest.raises(ValueError):
            parse_prometheus(broken)


def test_an_unreadable_metrics_endpoint_leaves_the_server_figures_empty():
    class Broken:
        def metrics(self):
            return "<html>not metrics</html>"

    assert probes.scrape(Broken()) is None
    assert probes.counter_deltas(None, parse_prometheus(TORCHSERVE_METRICS), "resnet101") == {
        "mean_batch_size": None, "note": "metrics endpoint not readable"}


def test_counter_deltas_give_the_mean_batch_size():
    before = parse_prometheus(TORCHSERVE_METRICS)
    after = parse_prometheus(TORCHSERVE_METRICS.replace("918.0", "1018.0").replace("7344.0", "13744.0")
                             .replace("7331.0", "13731.0").replace("2.5e+07", "3.14e+07"))
    deltas = probes.counter_deltas(before, after, "resnet101")
    assert deltas["handler_batches"] == 100 and deltas["handler_batched_requests"] == 6400
    assert deltas["mean_batch_size"] == 64.0
    assert deltas["server_requests"] == 6400 and deltas["mean_queue_ms"] == 1.0
    assert deltas["mean_server_latency_ms"] is None  # not in the text
    # counters that first appear during the run count from zero
    assert probes.counter_deltas([], after, "resnet101")["mean_batch_size"] == pytest.approx(13744 / 1018, abs=1e-3)
    assert probes.counter_deltas(before, after, "other")["mean_batch_size"] is None
    assert "note" in probes.counter_deltas(before, after, "other")
    assert probes.counter_deltas(None, after, "resnet101")["mean_batch_size"] is None


def test_counter_deltas_give_the_handler_stage_times_per_batch():
    stages = ('HandlerDecodeMs{ModelName="resnet101",Level="Model",Hostname="gpu-1",} 5000.0\n'
              'HandlerComputeMs{ModelName="resnet101",Level="Model",Hostname="gpu-1",} 7000.0\n'
              'HandlerTotalMs{ModelName="resnet101",Level="Model",Hostname="gpu-1",} 13000.0\n')
    before = parse_prometheus(TORCHSERVE_METRICS + stages)
    after = parse_prometheus((TORCHSERVE_METRICS + stages).replace("918.0", "1018.0").replace("5000.0", "6200.0")
                             .replace("7000.0", "8500.0").replace("13000.0", "15800.0"))
    deltas = probes.counter_deltas(before, after, "resnet101")
    assert deltas["handler_ms_per_batch"] == {"decode": 12.0, "compute": 15.0, "total": 28.0}
    assert "handler_ms_per_batch" not in probes.counter_deltas(parse_prometheus(TORCHSERVE_METRICS),
                                                               parse_prometheus(TORCHSERVE_METRICS), "resnet101")
    line = driver.stages_text(deltas)
    assert "decode 12.0 compute 15.0 total 28.0" in line


def test_host_cpu_summary_from_two_snapshots():
    before = {"t": 100.0, "total": 1000.0, "idle": 600.0,
              "procs": {"10": ("frontend", 50.0), "11": ("worker", 20.0), "12": ("worker", 30.0)}}
    after = {"t": 110.0, "total": 1160.0, "idle": 680.0,  # 16 cores x 10 s; 80 of 160 CPU-s idle
             "procs": {"10": ("frontend", 80.0), "11": ("worker", 29.0), "12": ("worker", 35.0),
                       "13": ("worker", 5.0)}}  # 13 started inside the window: no baseline, left out
    summary = probes.HostCpu.summary(before, after)
    assert summary["host_busy"] == 0.5
    assert summary["frontend_cores"] == 3.0
    assert summary["worker_cores"] == [0.9, 0.5]
    assert probes.HostCpu.summary(None, after) is None
    assert probes.HostCpu.summary(after, before) is None  # time must move forward
    assert "host CPU 50% of" in driver.host_cpu_text(summary)


def test_host_cpu_snapshot_finds_torchserve_processes(tmp_path):
    """A process whose command line carries the worker mark is counted as a worker (psutil reads it)."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", probes.HostCpu.WORKER_MARK])
    try:
        snap = probes.HostCpu.snapshot()
    finally:
        child.kill()
        child.wait()
    assert snap["total"] > 0 and 0 <= snap["idle"] <= snap["total"]
    assert snap["procs"][str(child.pid)][0] == "worker"


# ---------------------------------------------------------------------------------------------- HTTP


def test_parse_response_head():
    head = (b"HTTP/1.1 200 \r\ncontent-type: application/json\r\ncontent-length: 43\r\n"
            b"connection: keep-alive\r\n\r\n")
    assert http.parse_response_head(head) == (200, 43, False, False)
    head = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"
    assert http.parse_response_head(head) == (503, 5, False, True)
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert http.parse_response_head(head) == (200, None, True, False)
    assert http.parse_response_head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")[3] is True
    with pytest.raises(ValueError):
        http.parse_response_head(b"garbage\r\n\r\n")


def test_raw_request_is_a_complete_post():
    payload = payloads.Payload(b"\x00\x01body", "image/jpeg")
    raw = http.raw_request("127.0.0.1", 8080, "/predictions/m", "KEY", payload)
    head, body = raw.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /predictions/m HTTP/1.1"
    assert "Content-Length: 6" in lines and "Content-Type: image/jpeg" in lines
    assert "Authorization: Bearer KEY" in lines
    assert body == b"\x00\x01body"
    assert b"Authorization" not in http.raw_request("127.0.0.1", 8080, "/p", None, payload)


def test_connection_handles_keep_alive_chunked_close_and_timeouts():
    """The client against a tiny HTTP server: keep-alive, chunked bodies, server close, a stalled answer."""
    answers = [
        b"HTTP/1.1 200 \r\ncontent-length: 5\r\nconnection: keep-alive\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\nconnection: close\r\n\r\nno",
        None,  # never answers
    ]
    connections = []

    async def serve(reader, writer):
        connections.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                (length_line,) = [h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")]
                length = int(length_line.split(b":")[1])
                await reader.readexactly(length)
                answer = answers.pop(0)
                if answer is None:
                    await asyncio.sleep(5)
                    return
                writer.write(answer)
                await writer.drain()
                if b"connection: close" in answer:
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return

    async def scenario():
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        conn = http.Connection("127.0.0.1", port)
        raw = http.raw_request("127.0.0.1", port, "/p", "k", payloads.Payload(b"xyz", "text/plain"))
        statuses = [await conn.send(raw, 5.0), await conn.send(raw, 5.0), await conn.send(raw, 5.0)]
        after_close = conn.writer
        timed_out = await conn.send(raw, 0.3)
        server.close()
        return statuses, after_close, timed_out

    statuses, after_close, timed_out = asyncio.run(scenario())
    assert statuses == [200, 200, 404]
    assert after_close is None  # the server said close: dropped, reconnects on next use
    assert timed_out == stats.STATUS_TIMEOUT
    assert len(connections) == 2  # keep-alive: the first three requests shared one connection


def test_connection_error_when_nothing_listens():
    async def scenario():
        conn = http.Connection("127.0.0.1", free_ports(1)[0])
        return await conn.send(b"POST / HTTP/1.1\r\n\r\n", 2.0)

    assert asyncio.run(scenario()) == stats.STATUS_CONNECTION
    assert stats.status_name(stats.STATUS_CONNECTION) == "connection_error"


# ---------------------------------------------------------------------------------------------- gRPC


@pytest.fixture(scope="module")
def stubs_dir(tmp_path_factory):
    pytest.importorskip("grpc_tools", reason="grpcio-tools is not installed (pip install -e .[dev])")
    from torchserve_accel.tools.grpc_stubs import compile_stubs

    out = tmp_path_factory.mktemp("grpc-stubs")
    compile_stubs(out)
    return out


@pytest.fixture(scope="module")
def grpc_stubs(stubs_dir):
    from torchserve_accel.tools.grpc_stubs import import_stubs

    return import_stubs(stubs_dir)


def _inputs(stubs, raw):
    request = stubs.inference.PredictionsRequest.FromString(raw)
    return request.model_name, dict(request.input)


def test_grpc_requests_carry_each_image_of_a_group_as_an_indexed_entry(grpc_stubs):
    from torchserve_accel.tools.loadgen.grpc_client import prebuilt_requests

    images = [payloads.Payload(bytes([k]) * (10 + k), "image/jpeg", f"i{k}") for k in range(16)]
    groups = payloads.per_request(images, 16)
    assert groups[1].items == tuple(p.body for p in images[1:] + images[:1])  # each item's own bytes, in order
    json_groups = payloads.per_request(images, 16, image_format="json")
    texts = payloads.text_payloads(3, seed=1)
    text_group = payloads.per_request(texts, 3)[0]
    assert text_group.items == () and texts[0].items == ()  # texts travel as one JSON body
    raws = prebuilt_requests(grpc_stubs, "m", [groups[1], json_groups[1], images[0], texts[0], text_group])
    for raw in raws[:2]:
        model, entries = _inputs(grpc_stubs, raw)
        assert model == "m" and sorted(entries, key=int) == [str(k) for k in range(16)]
        assert [entries[str(k)] for k in range(16)] == list(groups[1].items)
    assert _inputs(grpc_stubs, raws[2]) == ("m", {"data": images[0].body})
    assert json.loads(_inputs(grpc_stubs, raws[3])[1]["data"]) == json.loads(texts[0].body)
    assert json.loads(_inputs(grpc_stubs, raws[4])[1]["data"])["texts"] == [json.loads(t.body)["text"] for t in texts]


def test_grpc_statuses_for_answers_and_failed_calls(grpc_stubs):
    grpc = pytest.importorskip("grpc")
    from torchserve_accel.tools.loadgen.grpc_client import answer_status, code_status

    response = grpc_stubs.inference.PredictionResponse

    def answer(prediction: bytes) -> bytes:
        return response(prediction=prediction).SerializeToString()

    assert answer_status(answer(b'{"label": "tabby", "score": 0.9}'), response) == 200
    assert answer_status(answer(b'{"error": "not an image", "status": 415}'), response) == 415  # a refusal
    assert answer_status(answer(b'{"error": "no status"}'), response) == 500
    assert answer_status(answer(b'{"outputs": {"error": "a field of the answer"}}'), response) == 200
    assert answer_status(answer(b'"error" in a text that is no JSON {'), response) == 200
    assert answer_status(b'"error" but no PredictionResponse', response) == stats.STATUS_CONNECTION
    assert code_status(grpc.StatusCode.DEADLINE_EXCEEDED) == stats.STATUS_TIMEOUT
    assert code_status(grpc.StatusCode.UNAVAILABLE) == stats.STATUS_CONNECTION
    others = [code for code in grpc.StatusCode if code not in (grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED,
                                                               grpc.StatusCode.UNAVAILABLE)]
    assert len({code_status(code) for code in others}) == len(others) == 14
    for code in others:
        assert code_status(code) < stats.STATUS_CONNECTION
        assert stats.status_name(code_status(code)) == "grpc_" + code.name.lower()  # e.g. grpc_internal
    assert not stats.is_4xx(stats.status_name(code_status(grpc.StatusCode.INTERNAL)))


def test_grpc_transport_is_an_option_of_bench_and_sweep_for_an_instance_of_a_run_directory():
    assert build_parser().parse_args(["bench", "m"]).transport == "http"
    assert build_parser().parse_args(["bench", "m", "--transport", "grpc"]).transport == "grpc"
    assert build_parser().parse_args(["sweep", "run", "m", "--transport", "grpc"]).transport == "grpc"
    by_url = TorchServeAt({"inference": "http://127.0.0.1:8080"})
    payload = [payloads.Payload(b"x", "application/octet-stream")]
    with pytest.raises(TorchServeError, match="run directory"):
        driver._check(by_url, payload, driver.LoadConfig(transport="grpc"))
    with pytest.raises(ValueError, match="transport"):
        driver._check(by_url, payload, driver.LoadConfig(transport="h3"))
    assert driver._check(by_url, payload, driver.LoadConfig(processes=2)) == 2


def test_grpc_connection_against_a_local_server(grpc_stubs, stubs_dir):
    """The client against a grpc.aio server of the same method: the key in the metadata, answers, a refusal in the
    body, a failed call, a deadline, and several calls at once on one channel."""
    grpc = pytest.importorskip("grpc")
    from torchserve_accel.tools.grpc_stubs import bearer
    from torchserve_accel.tools.loadgen.grpc_client import PREDICTIONS, GrpcChannels, GrpcTarget, prebuilt_requests

    seen = []

    async def predictions(raw, context):
        request = grpc_stubs.inference.PredictionsRequest.FromString(raw)
        seen.append((dict(context.invocation_metadata()).get("authorization"), sorted(request.input)))
        body = request.input.get("data", b"")
        if body == b"slow":
            await asyncio.sleep(5)
        if body == b"fail":
            await context.abort(grpc.StatusCode.INTERNAL, "Model not found")
        prediction = b'{"error": "bad", "status": 422}' if body == b"bad" else b'{"bytes": 1}'
        return grpc_stubs.inference.PredictionResponse(prediction=prediction).SerializeToString()

    service, method = PREDICTIONS.strip("/").split("/")
    handler = grpc.method_handlers_generic_handler(service, {method: grpc.unary_unary_rpc_method_handler(predictions)})
    bodies = [b"good", b"bad", b"fail", b"slow"]
    raws = prebuilt_requests(grpc_stubs, "m", [payloads.Payload(b, "application/octet-stream") for b in bodies])

    async def scenario():
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channels = GrpcChannels("127.0.0.1", port, GrpcTarget(str(stubs_dir), bearer("KEY"), 2))
        conns = [channels.connection() for _ in range(3)]
        await asyncio.gather(*(c.connect() for c in conns))
        statuses = [await conns[0].send(raw, 5.0) for raw in raws[:3]]
        timed_out = await conns[1].send(raws[3], 0.3)
        together = await asyncio.gather(*(c.send(raws[0], 5.0) for c in conns))
        await channels.close()
        await server.stop(None)
        return statuses, timed_out, together, {id(c.channel) for c in conns}

    statuses, timed_out, together, channels_used = asyncio.run(scenario())
    assert statuses == [200, 422, stats.STATUS_GRPC - grpc.StatusCode.INTERNAL.value[0]]
    assert timed_out == stats.STATUS_TIMEOUT and together == [200, 200, 200]
    assert len(channels_used) == 2  # the connections take the channels in turn
    assert {auth for auth, _ in seen} == {"Bearer KEY"} and seen[0][1] == ["data"]


# ---------------------------------------------------------------------------------------------- payloads


def test_text_payloads_spread_lengths_within_128_tokens():
    texts_ = payloads.text_payloads(200, seed=1)
    assert texts_ == payloads.text_payloads(200, seed=1)  # deterministic
    texts = [json.loads(p.body)["text"] for p in texts_]
    assert all(p.content_type == "application/json" for p in texts_)
    words = [len(t.split()) for t in texts]
    assert min(words) <= 15 and max(words) >= 85  # mixed lengths, not one size
    assert max(payloads.approx_tokens(t) for t in texts) <= 124
    assert all(t[0].isupper() and t.endswith(".") for t in texts)


def test_photo_like_jpeg_is_imagenet_sized():
    from PIL import Image

    data = payloads.photo_like_jpeg(3)
    assert 55_000 < len(data) < 100_000  # real 500x375 q90 photos are ~60-100 KB
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG" and image.size == (500, 375)
    assert payloads.photo_like_jpeg(3) == data


def test_folder_payloads(tmp_path):
    (tmp_path / "b.png").write_bytes(b"png")
    (tmp_path / "a.JPG").write_bytes(b"jpg")
    (tmp_path / "notes.txt").write_text("skip me")
    found = payloads.folder_payloads(tmp_path)
    assert [(p.name, p.content_type) for p in found] == [("a.JPG", "image/jpeg"), ("b.png", "image/png")]
    assert [p.name for p in payloads.folder_payloads(tmp_path, limit=1)] == ["a.JPG"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no image files"):
        payloads.folder_payloads(empty)


def test_build_payloads_picks_texts_for_bert_and_images_otherwise(tmp_path):
    texts, desc = payloads.build_payloads("bert_large", texts=None, seed=2)
    assert len(texts) == 256 and desc["kind"] == "text" and desc["words"] == [4, 100]
    assert desc["approx_tokens"]["max"] <= 124 and desc["bytes"]["min"] > 0
    images, desc = payloads.build_payloads("resnet101", images=3)
    assert len(images) == 3 and desc == {"kind": "images", "source": "synthetic 500x375 JPEG q90 with grain",
                                         "count": 3, "bytes": desc["bytes"], "items_per_request": 1}
    (tmp_path / "x.png").write_bytes(b"png")
    folder, desc = payloads.build_payloads("bert_large", image_dir=tmp_path)  # a folder wins over the name
    assert [p.name for p in folder] == ["x.png"] and desc["source"] == str(tmp_path)


def test_several_items_per_request_take_each_item_in_turn():
    images = payloads.image_payloads(3, size=(40, 30))
    grouped = payloads.per_request(images, 2)
    assert len(grouped) == 3 and all(g.content_type.startswith("multipart/form-data; boundary=") for g in grouped)
    # each image travels twice in all, in the order given, as a binary part (no base64)
    for start, g in enumerate(grouped):
        first, second = images[start].body, images[(start + 1) % 3].body
        assert first in g.body and second in g.body and g.body.index(first) < g.body.index(second)
    grouped = payloads.per_request(images, 2, image_format="json")
    assert all(g.content_type == "application/json" for g in grouped)
    assert [base64.b64decode(s) for s in json.loads(grouped[0].body)] == [images[0].body, images[1].body]
    texts = payloads.text_payloads(4, seed=1)
    grouped = payloads.per_request(texts, 3)
    assert [json.loads(g.body)["texts"] for g in grouped][1] == [json.loads(t.body)["text"] for t in texts[1:4]]
    assert payloads.per_request(texts, 1) == texts
    with pytest.raises(ValueError, match=">= 1"):
        payloads.per_request(texts, 0)
    _, desc = payloads.build_payloads("resnet101", images=2, items_per_request=4)
    assert desc["items_per_request"] == 4
    assert driver.sent_as(desc, "grpc")["image_format"] == "grpc input entries"
    assert driver.sent_as(desc, "http") == {**desc, "transport": "http"}


def test_gpu_utilization_is_null_without_a_gpu(monkeypatch):
    from torchserve_accel.tools import gpu

    monkeypatch.setattr(gpu.Nvml, "open", classmethod(lambda cls: None))
    monkeypatch.setattr(gpu.shutil, "which", lambda name: None)
    with probes.GpuUtilization() as sampler:
        pass
    assert sampler.summary(0, 1e9) is None
    assert probes.describe_card().startswith("CPU only")


def test_gpu_utilization_summary_over_the_window():
    sampler = probes.GpuUtilization()
    sampler.available = True
    sampler.samples = [{"t": t, "index": i, "util": u, "memory_mib": m} for t, i, u, m in
                       [(1.0, 0, 10.0, 100.0), (2.0, 0, 90.0, 200.0), (3.0, 0, 100.0, 300.0), (2.5, 1, 50.0, 10.0),
                        (9.0, 0, 0.0, 0.0)]]
    summary = sampler.summary(1.5, 3.5)
    assert summary["per_gpu"]["0"] == {"util_mean": 95.0, "util_p50": 95.0, "memory_max_mib": 300.0, "samples": 2,
                                       "series": [[0.5, 90.0], [1.5, 100.0]]}
    assert summary["util_mean"] == 72.5


# ---------------------------------------------------------------------------------------------- sweep reports


def test_worker_states_count_ready_workers_and_do_not_repeat_torchserves_unloading_for_loading_ones():
    assert sweep.worker_states(["READY", "UNLOADING", "UNLOADING"]) == "1 READY, 2 not ready"
    assert sweep.worker_states(["READY", "READY"]) == "2 READY, 0 not ready"
    assert sweep.worker_states([]) == "none"


def _document(label, ok_rps, p99, errors=None, workers=1, rate=None):
    return {"schema": driver.SCHEMA, "label": label, "card": "1x NVIDIA H100", "versions": {"torch": "x"},
            "config": {"model": "resnet101", "mode": "open" if rate else "closed",
                       "load": {"concurrency": 64, "rate": rate},
                       "server": {"batchSize": 64, "maxBatchDelay": 5, "workers": workers}},
            "results": {"ok_rps": ok_rps, "throughput_rps": ok_rps,
                        "latency_ms": {"p50": p99 / 2, "p90": p99, "p99": p99},
                        "errors": errors or {}, "error_rate": 0.0 if not errors else 0.01,
                        "server": {"mean_batch_size": 60.0}, "gpu": None, "client": {"busiest_process_cpu": 0.2}}}


def test_pick_best_under_the_p99_bound():
    points = [sweep.point_summary(_document("a", 9000, 80)), sweep.point_summary(_document("b", 12000, 140)),
              sweep.point_summary(_document("c", 10000, 95)),
              sweep.point_summary(_document("d", 11000, 90, errors={"503": 50})),
              {"label": "e", "error": "scaling failed"}]
    assert sweep.pick_best(points, 100)["label"] == "c"
    assert sweep.pick_best(points, 150)["label"] == "b"
    assert sweep.pick_best(points, 10) is None


def test_auto_concurrency_and_labels():
    assert sweep.auto_concurrency(4, 64, 1.5) == 384
    assert sweep.auto_concurrency(1, 1, 1.5) == 8
    assert sweep.sweep_label("resnet101", 8, 64, 5) == "resnet101-w8-bs64-d5"


def test_combine_ratios_and_table(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "ours.json").write_text(json.dumps(_document("ours-resnet101-closed", 12000, 60, workers=4)))
    (results / "base.json").write_text(json.dumps(_document("baseline-stock", 400, 300)))
    (results / "open.json").write_text(json.dumps(_document("ours-resnet101-open", 9600, 40, rate=9600.0)))
    (results / "junk.json").write_text("{not json")
    steps = tmp_path / "steps.tsv"
    steps.write_text("start\t0\t3\nload-bert\tskipped\t0\nsweep\t124\t200\n")
    out = tmp_path / "combined.json"
    document = sweep.combine(out, [results], steps, ["speedup=ours-resnet101-closed/baseline-stock",
                                                     "missing=ours-resnet101-closed/nothing"])
    assert json.loads(out.read_text()) == document
    assert document["ratios"] == {"speedup": 30.0, "missing": None}
    assert [s["rc"] for s in document["steps"]] == [0, "skipped", 124]
    assert document["card"] == "1x NVIDIA H100" and len(document["runs"]) == 3
    runs, sweeps = sweep.load_documents([out])  # a combined file reads back as its runs
    assert len(runs) == 3 and sweeps == []
    text = sweep.report(document)
    assert "| ours-resnet101-closed | 4 | 64 | 5 | 64 in flight | 12000 |" in text
    assert "9600/s open" in text
    assert "speedup: 30.0x" in text and "failed steps: sweep (rc 124)" in text and "skipped steps: load-bert" in text
    over_grpc = _document("ours-resnet101-grpc", 12000, 60)
    over_grpc["config"]["load"]["transport"] = "grpc"
    assert "| 64 in flight gRPC |" in sweep.markdown_table([sweep.point_summary(over_grpc)])


def test_a_run_that_serves_nothing_or_errs_fails_the_check(tmp_path, capsys):
    """The served check's tuned baseline once answered nothing in 15 s and the table said "n/a": combine now names
    such runs (and runs with more than 1% errors) and exits 1; sweep points are exploratory and do not count."""
    results = tmp_path / "results"
    results.mkdir()
    (results / "ours.json").write_text(json.dumps(_document("ours-resnet101-closed", 12000, 60)))
    nothing = _document("baseline-tuned", 0, 0)
    nothing["results"].update(ok_rps=0.0, window_s=15.0)
    (results / "tuned.json").write_text(json.dumps(nothing))
    erring = _document("ours-bert-closed", 3000, 40, errors={"503": 200})
    erring["results"]["error_rate"] = 0.02
    (results / "bert.json").write_text(json.dumps(erring))
    point = _document("resnet101-w8-bs64-d5", 0, 0)
    point["results"]["ok_rps"] = 0.0
    point["sweep_point"] = {"workers": 8, "batch_size": 64, "max_batch_delay": 5, "concurrency": 96}
    (results / "point.json").write_text(json.dumps(point))
    document = sweep.combine(tmp_path / "combined.json", [results])
    assert document["failed_runs"] == ["baseline-tuned: served nothing in its 15.0 s window",
                                       "ours-bert-closed: 2.0% of requests failed"]
    assert "FAILED run baseline-tuned: served nothing" in sweep.report(document)
    args = build_parser().parse_args(["sweep", "combine", str(tmp_path / "again.json"), str(results)])
    assert args.run(args) == 1
    (results / "tuned.json").unlink()
    (results / "bert.json").unlink()
    assert args.run(args) == 0


def test_plot_results_writes_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    from torchserve_accel.tools import plot as plot_results

    results = tmp_path / "results"
    results.mkdir()
    for i, workers in enumerate((1, 2, 4)):
        document = _document(f"resnet101-w{workers}-bs64-d5", 4000 * (i + 1), 30 + 20 * i, workers=workers)
        document["sweep_point"] = {"workers": workers, "batch_size": 64, "max_batch_delay": 5, "concurrency": 96}
        (results / f"p{i}.json").write_text(json.dumps(document))
    (results / "base.json").write_text(json.dumps(_document("baseline-stock", 400, 300)))
    written = plot_results.plot_all([results], tmp_path / "plots", p99_bound_ms=100)
    assert sorted(p.name for p in written) == ["resnet101_sweep_workers.png", "resnet101_throughput_vs_p99.png"]
    ours = _document("ours-resnet101-closed", 13000, 70)
    ours["results"]["gpu"] = {"util_mean": 90.0, "per_gpu": {"0": {"series": [[0.1, 85.0], [0.3, 95.0]]}}}
    (results / "ours.json").write_text(json.dumps(ours))
    written = plot_results.plot_all([results], tmp_path / "plots", p99_bound_ms=100)
    assert "resnet101_gpu_busy.png" in [p.name for p in written]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)


def test_the_tuned_baseline_caps_each_workers_cpu_threads(monkeypatch, tmp_path):
    """Ten stock-style workers with PyTorch's default threads (one per core each) answered nothing in 15 s on a
    16-core host: the tuned variant's model-config gives each worker cores / workers threads."""
    built = {}
    monkeypatch.setattr(sweep, "build_archive", lambda model, *a, name, config_overrides=None, **k:
                        built.setdefault(name, config_overrides))
    monkeypatch.setattr(sweep.os, "cpu_count", lambda: 16)
    for name in ("resnet101_baseline", "resnet101_baseline_tuned"):
        sweep.build_bench_archive(name, tmp_path, baseline_workers=10)
    assert built == {"resnet101_baseline": None, "resnet101_baseline_tuned": {"handler.torch_threads": 1}}
    built.clear()
    sweep.build_bench_archive("resnet101_baseline_tuned", tmp_path, baseline_workers=4)
    assert built == {"resnet101_baseline_tuned": {"handler.torch_threads": 4}}
    built.clear()
    # our archives keep archiver_configs' workers unless told; the FP8 variant is BERT-Large with precision: fp8
    sweep.build_bench_archive("bert_large_fp8", tmp_path)
    sweep.build_bench_archive("resnet101", tmp_path, workers=1)
    assert built == {"bert_large_fp8": {"handler.precision": "fp8"}, "resnet101": {"minWorkers": 1, "maxWorkers": 1}}
    handler = sweep.data_file(sweep.BASELINE_HANDLER).read_text()
    assert 'get("torch_threads")' in handler and "torch.set_num_threads(int(threads))" in handler
