"""BERT on a fused, padding-free encoder, for handlers/bert_handler.py.

    options.py          BertOptions: the handler: section of model-config.yaml
    requests.py         request bodies -> texts (question/context pairs) or a 4xx for that request alone
    tokenize.py         the checkpoint's fast tokenizer, one call per batch, truncation reported
    packing.py          host-side packing into one int64 buffer (cu_seqlens, indices), chunks, token buckets
    remap.py            HF state dict <-> ours (QKV joined once)
    encoder.py          PackedBert: embeddings, layers, heads on packed tokens
    attention.py        varlen_attn / dense SDPA for uniform chunks / padded-SDPA fallback, picked at load time
    fused_ops.py        the bias+GELU and bias+residual+LayerNorm epilogues (reference formulas)
    triton_ops.py       ... as Triton kernels
    triton_gemm.py      the FFN's first GEMM with bias+GELU in its epilogue (sm90+, chosen by timing at load)
    qa.py               question answering: start/end logits -> best answer spans, all pairs at once
    graphs.py           CUDA graphs per packed-token bucket
    bert.py             load a checkpoint dir -> BertRunner (the hot path); prepare_archive_files
    tensorrt_backend.py optional TensorRT engine (ONNX export + builder), imported only when asked for
    vocab.py            a made-up WordPiece vocabulary for random-weight archives
    reference.py        HF reference models and comparison helpers for tests and benchmarks/bench_bert.py
"""
