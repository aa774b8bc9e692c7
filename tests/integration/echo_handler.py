"""TorchServe entry file of the echo model (tests/integration/echo_model.py), on the same skeleton as the real
handlers, so per-request 4xx and the batch metrics go through the same code."""

from echo_model import EchoOptions, load

from torchserve_accel.serving.handler import ModelHandler


class EchoHandler(ModelHandler):
    options = EchoOptions
    load = load
