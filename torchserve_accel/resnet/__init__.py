"""ResNet-101 ImageNet classification with images decoded and preprocessed on the GPU, batched.

The model's four parts:
    options.py      ResNetOptions: the handler: section of model-config.yaml
    runner.py       load(model_dir, options, device, batch_size) -> ResNetRunner; parse one request, run a batch
    engines.py      the backend registry: eager, cudnn (fused cuDNN kernels, CUDA graphs), inductor, tensorrt
    archive.py      the archive's weights: a torchvision state_dict, or random weights (build time only)
What they are built from:
    images.py       batched decode (nvJPEG, PIL fallback) and resize + crop + normalize as two matmuls
    model.py        torchvision's ResNet-101, weights from local files, BatchNorm folding
    cudnn_fused.py  conv+bias(+residual)+ReLU as single cuDNN kernels
    gate.py         the correctness gate against fp32 eager, and its synthetic input
"""
