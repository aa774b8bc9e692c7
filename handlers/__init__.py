"""torchserve-accel: TorchServe handlers that keep the GPU busy.

Layout
    handlers/config.py          typed handler options read once from model-config.yaml
    handlers/common.py          request decoding, per-request errors, batch metrics
    handlers/resnet_handler.py  TorchServe entry point for ResNet-101 image classification
    handlers/bert_handler.py    TorchServe entry point for BERT sequence classification / embeddings
    handlers/vision/            image decode/resize/normalize, ResNet loading, engine backends
    handlers/text/              tokenization, weight remap, fused padding-free encoder
"""

__version__ = "0.1.0"
