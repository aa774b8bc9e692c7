"""BERT on a fused, padding-free encoder: classification, sentence embeddings, extractive question answering.

The model's four parts:
    options.py      BertOptions: the handler: section of model-config.yaml
    runner.py       load(model_dir, options, device, batch_size) -> BertRunner; parse one request, run a batch
    engines.py      the backend registry: packed (our encoder, CUDA graphs), inductor, tensorrt
    archive.py      the archive's files: a local HF checkpoint, or a random BERT-Large (build time only)
What they are built from:
    requests.py     request payloads -> texts (question/context pairs), or a 4xx for that request alone
    tokenize.py     the checkpoint's fast tokenizer, one call per batch, truncation reported, QA windows
    checkpoint.py   config.json + safetensors -> PackedBert, through remap.py (HF names -> ours, QKV joined)
    packing.py      host-side packing into one int64 buffer (cu_seqlens, indices), chunks, token buckets
    encoder.py      PackedBert: embeddings, layers, heads on packed tokens
    attention.py    varlen_attn / dense SDPA for uniform chunks / padded-SDPA fallback, picked at load time
    ops.py          the bias+GELU and bias+residual+LayerNorm epilogues (reference formulas)
    triton_ops.py   ... as Triton kernels; triton_gemm.py: the FFN's first GEMM with bias+GELU in its epilogue
    qa.py           start/end logits -> the best answer span of each pair
    vocab.py        a made-up WordPiece vocabulary for random-weight archives (build time only)
"""
