"""A padding-free BERT encoder: embeddings, N layers and the heads, all on packed tokens.

Shapes: T packed tokens of the chunk (``PackedBatch.num_tokens``), S sequence slots, H hidden size.

    PackedBatch --embeddings--> (T, H) --layers--> (T, H) --head--> (S, labels) probabilities | (S, H) embeddings
                                                                    | (T, 2) answer start/end logits

Per layer: one fused QKV GEMM (with bias), attention on packed tokens (attention.py), then three bias-free GEMMs
whose epilogues run as ``ops.bias_residual_layernorm`` / ``ops.bias_gelu`` (ops.py). Each GEMM is a ``Linear``
or, with ``precision: fp8``, an ``fp8.Fp8Linear`` put in its place at load time (fp8.py). The attention backend
and the epilogue ops are picked at load time and handed in; this code does not know whether it is compiled,
captured in a CUDA graph or run eagerly. Weights come in through ``torchserve_accel.bert.remap`` (HF names -> ours).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from torchserve_accel.bert.attention import PaddedSDPAttention
from torchserve_accel.bert.fp8 import Fp8Linear
from torchserve_accel.bert.ops import TorchOps
from torchserve_accel.bert.packing import PackedBatch

Head = Literal["classify", "embed_cls", "embed_mean", "qa", "hidden"]


@dataclass(frozen=True)
class EncoderConfig:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position: int
    type_vocab_size: int
    layer_norm_eps: float
    num_labels: int = 0  # 0: no classifier
    with_pooler: bool = True
    with_qa: bool = False  # a question-answering head (start/end logit per token)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_hf(cls, config: Any, num_labels: int = 0, with_pooler: bool = True, with_qa: bool = False) -> "EncoderConfig":
        """From a transformers ``BertConfig``; refuses variants this encoder does not implement."""
        act = getattr(config, "hidden_act", "gelu")
        if act != "gelu":
            raise ValueError(f"only exact GELU is implemented, the checkpoint uses hidden_act={act!r}")
        position = getattr(config, "position_embedding_type", "absolute") or "absolute"
        if position != "absolute":
            raise ValueError(f"only absolute position embeddings are implemented, got {position!r}")
        if config.hidden_size % config.num_attention_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")
        return cls(
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            num_layers=config.num_hidden_layers,
            num_heads=config.num_attention_heads,
            intermediate_size=config.intermediate_size,
            max_position=config.max_position_embeddings,
            type_vocab_size=config.type_vocab_size,
            layer_norm_eps=config.layer_norm_eps,
            num_labels=num_labels,
            with_pooler=with_pooler,
            with_qa=with_qa,
        )


class Linear(nn.Linear):
    """``nn.Linear`` plus ``gemm``: the bias-free product, whose bias the layer's epilogue adds. ``fp8.Fp8Linear``
    has the same two calls, so the layer code does not know which precision a GEMM runs in; both take ``xq``, the
    input already in e4m3 with row scales (made by the LayerNorm before an FP8 GEMM), which only FP8 GEMMs read."""

    def gemm(self, x: torch.Tensor, xq=None) -> torch.Tensor:
        return F.linear(x, self.weight)

    def forward(self, x: torch.Tensor, xq=None) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class PackedEmbeddings(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position = nn.Embedding(cfg.max_position, cfg.hidden_size)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, token_type_ids: torch.Tensor):
        """Any leading shape: (...,) int64 ids -> (..., H)."""
        x = self.word(input_ids) + self.position(position_ids) + self.token_type(token_type_ids)
        return self.norm(x)


class PackedBertLayer(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        h = cfg.hidden_size
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.qkv = Linear(h, 3 * h)  # rows: [query; key; value], joined once at load time
        self.attn_out = Linear(h, h)
        self.attn_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.ffn_in = Linear(h, cfg.intermediate_size)
        self.ffn_out = Linear(cfg.intermediate_size, h)
        self.ffn_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)

    # Set by fp8.place: the next layer's QKV GEMM runs in FP8, so this layer's last LayerNorm also writes e4m3.
    quantize_output = False

    def forward(self, x: torch.Tensor, attention, meta, ops, xq=None):
        """x: (..., H) (packed (T, H) in serving, (B, L, H) in export) -> (the same shape and dtype, and the output
        in e4m3 with row scales when ``quantize_output``, else None). ``xq``: x in e4m3 (the previous layer's
        LayerNorm wrote it), or None. Before an FP8 GEMM the LayerNorm kernel writes its input in e4m3: no separate
        quantizing pass over the hidden states."""
        qkv = self.qkv(x, xq).unflatten(-1, (3, self.num_heads, self.head_dim))
        context = attention(qkv, meta).flatten(-2)
        x, xq = _norm(ops, self.attn_out.gemm(context), self.attn_out.bias, x, self.attn_norm,
                      quantize=isinstance(self.ffn_in, Fp8Linear))
        return _norm(ops, ops.ffn(x, self.ffn_in, self.ffn_out, xq), self.ffn_out.bias, x, self.ffn_norm,
                     quantize=self.quantize_output)


def _norm(ops, x: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor, norm: nn.LayerNorm, quantize: bool):
    """The layer's epilogue LayerNorm -> (output, output in e4m3 with row scales or None)."""
    if quantize:
        return ops.bias_residual_layernorm_quantized(x, bias, residual, norm)
    return ops.bias_residual_layernorm(x, bias, residual, norm), None


class PackedBert(nn.Module):
    """BERT on packed tokens. ``forward(batch)`` returns what ``head`` asks for:

    * ``classify``: (S, num_labels) float32 probabilities
    * ``embed_cls`` / ``embed_mean``: (S, H) float32 sentence embeddings ([CLS] hidden state or mean of tokens)
    * ``qa``: (T, 2) float32 start and end logits of every packed token (``torchserve_accel.bert.qa`` picks the spans)
    * ``hidden``: (T, H) last hidden states, packed (``unpack_hidden`` restores padding)
    """

    def __init__(self, cfg: EncoderConfig, attention=None, ops=None, head: Head = "hidden", normalize: bool = False):
        super().__init__()
        self.cfg = cfg
        self.embeddings = PackedEmbeddings(cfg)
        self.layers = nn.ModuleList(PackedBertLayer(cfg) for _ in range(cfg.num_layers))
        self.pooler = nn.Linear(cfg.hidden_size, cfg.hidden_size) if cfg.with_pooler else None
        self.classifier = nn.Linear(cfg.hidden_size, cfg.num_labels) if cfg.num_labels else None
        self.qa_outputs = nn.Linear(cfg.hidden_size, 2) if cfg.with_qa else None
        self.attention = attention or PaddedSDPAttention()
        self.ops = ops or TorchOps()
        self.head: Head = head
        self.normalize = normalize

    def encode(self, batch: PackedBatch) -> torch.Tensor:
        """(T,) token fields -> (T, H) last hidden states; padding never enters."""
        x = self.embeddings(batch.input_ids, batch.position_ids, batch.token_type_ids)
        meta = self.attention.prepare(batch)  # once per batch, shared by every layer
        xq = None
        for layer in self.layers:
            x, xq = layer(x, self.attention, meta, self.ops, xq)
        return x

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        return self.apply_head(self.encode(batch), batch, self.head)

    def apply_head(self, hidden: torch.Tensor, batch: PackedBatch, head: Head) -> torch.Tensor:
        """(T, H) packed hidden states -> what ``head`` asks for (see the class docstring)."""
        if head == "hidden":
            return hidden
        if head == "qa":
            return self.qa_outputs(hidden).float()
        if head == "embed_mean":
            pooled = mean_pool(hidden, batch)
        else:
            pooled = hidden.index_select(0, batch.first_token)  # (S, H) [CLS] states
        if head == "classify":
            logits = self.classifier(torch.tanh(self.pooler(pooled)))
            return torch.softmax(logits.float(), dim=-1)
        pooled = pooled.float()
        return F.normalize(pooled, dim=-1) if self.normalize else pooled


def mean_pool(hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    """(T, H) packed -> (S, H) float32 mean over each sequence's tokens (fp32 sums; pad tokens go to slot S)."""
    slots = batch.seq_slots
    sums = hidden.new_zeros((slots + 1, hidden.shape[-1]), dtype=torch.float32)
    sums.index_add_(0, batch.seq_ids, hidden.float())
    lengths = (batch.cu_seqlens[1:] - batch.cu_seqlens[:-1]).clamp(min=1)
    return sums[:slots] / lengths[:, None].to(torch.float32)


def unpack_hidden(hidden: torch.Tensor, batch: PackedBatch, num_seqs: int) -> torch.Tensor:
    """Restore padding once, at exit: (T, H) packed -> (num_seqs, max_seqlen, H) with zeros at padded positions."""
    rows = (batch.seq_slots + 1) * batch.max_seqlen
    dense = hidden.new_zeros((rows, hidden.shape[-1])).index_copy_(0, batch.dense_index, hidden)
    return dense.view(batch.seq_slots + 1, batch.max_seqlen, -1)[:num_seqs]
