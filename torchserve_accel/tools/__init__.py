"""The ``torchserve-accel`` command and what it is built from (``python -m torchserve_accel`` runs it too).

    cli.py          the command: one argparse parser, a subcommand per tool
    commands.py     how each tool module adds its subcommands to that parser
    paths.py        the files archives and instances are made from (shipped in the wheel, or the checkout's)
    build.py        model archives (.mar, .tar.gz, a directory) with torch-model-archiver
    bundle.py       the library inside an archive: what workers need of it, its requirements.txt
    launch.py       what starting TorchServe needs: Java 17+, free ports, a per-instance config.properties
    torchserve.py   one TorchServe instance: start, stop, authenticated management and inference calls
    drain.py        scale down and unregister without dropping queued or in-flight requests
    endpoints.py    any other TorchServe, by its URLs and keys; the loopback check
    mps.py          an NVIDIA MPS daemon private to an instance
    client.py       concurrent predictions from files and texts
    images.py       synthetic photo-like test images
    demo.py         the main job: build, serve and query ResNet-101 (and BERT-Large)
    loadgen/        the load generator: payloads, HTTP and gRPC clients, load processes, probes, statistics, driver
    grpc_stubs.py   Python stubs for TorchServe's gRPC APIs, compiled from the protos in its jar
    soak.py         steady load for minutes: no failure, no restart, bounded memory; bad inputs mixed in, a
                    worker killed under load, soaks of several models combined
    sweep.py        benchmark archives, worker waits, sweeps over workers x batching, combined reports
    plot.py         throughput-vs-p99 plots of result files
    gpu.py          GPU figures through NVML, nvidia-smi as a fallback
    prometheus.py   TorchServe's metrics text through prometheus_client
    polling.py      the one wait-until-ready-or-deadline loop
"""

from typing import Callable

Log = Callable[[str], None]  # where a tool writes its progress lines (print, a list's append, a no-op)
