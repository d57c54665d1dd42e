"""An OLMoE-architecture transformer with Switch (top-1) routing, small enough to read in one sitting.

Semantics follow Hugging Face's OlmoeForCausalLM: pre-norm RMSNorm blocks, Q and K RMS-normalised over the
full width, NeoX rotary over the whole head, SwiGLU experts without biases, softmax router in fp32, top-1,
expert output multiplied by the chosen expert's probability (no renormalisation).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, asdict

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ModelConfig:
    vocab_size: int = 258  # 256 bytes + BOS + EOS
    hidden_size: int = 256
    intermediate_size: int = 512  # per expert
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_experts: int = 8
    max_position_embeddings: int = 512
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    bos_token_id: int = 256
    eos_token_id: int = 257
    # Switch recipe (training only; inference never drops tokens).
    capacity_factor: float = 1.25
    router_aux_loss_coef: float = 0.01
    router_z_loss_coef: float = 1e-3

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def to_dict(self) -> dict:
        return asdict(self)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(variance + self.eps))


def rotary_cos_sin(positions: torch.Tensor, head_dim: int, theta: float):
    """NeoX rotary tables: the first and second half of each head share frequencies."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.hidden_size
        self.cfg = cfg
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)
        self.q_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(d, cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h, hd = self.cfg.num_attention_heads, self.cfg.head_dim
        q = self.q_norm(self.q_proj(x)).view(b, t, h, hd).transpose(1, 2)
        k = self.k_norm(self.k_proj(x)).view(b, t, h, hd).transpose(1, 2)
        v = self.v_proj(x).view(b, t, h, hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        scores = scores.masked_fill(causal, float("-inf"))
        y = F.softmax(scores, dim=-1) @ v
        return self.o_proj(y.transpose(1, 2).reshape(b, t, d))


class Expert(nn.Module):
    """SwiGLU FFN: down(silu(gate(x)) * up(x))."""

    def __init__(self, d: int, f: int):
        super().__init__()
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


@dataclass
class RouterStats:
    """What one MoE layer did in one forward pass."""
    choice: torch.Tensor       # [tokens] chosen expert
    gate: torch.Tensor         # [tokens] chosen expert's probability
    dropped: int               # tokens over capacity (passed through the residual)
    aux_loss: torch.Tensor     # N * sum(f_i * P_i)
    z_loss: torch.Tensor       # mean(logsumexp(logits)^2)


class SwitchMoE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.gate = nn.Linear(cfg.hidden_size, cfg.num_experts, bias=False)  # the router
        self.experts = nn.ModuleList(Expert(cfg.hidden_size, cfg.intermediate_size) for _ in range(cfg.num_experts))

    def forward(self, x: torch.Tensor, capacity_factor: float | None):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        n, num_experts = x.shape[0], self.cfg.num_experts
        logits = self.gate(x.float())  # router in fp32
        probs = F.softmax(logits, dim=-1)
        gate, choice = probs.max(dim=-1)
        capacity = n if capacity_factor is None else math.ceil(capacity_factor * n / num_experts)
        out = torch.zeros_like(x)
        dropped = 0
        for e, expert in enumerate(self.experts):
            rows = (choice == e).nonzero(as_tuple=True)[0]
            if rows.numel() > capacity:  # Switch: overflow tokens skip the expert, keep their residual
                dropped += rows.numel() - capacity
                rows = rows[:capacity]
            if rows.numel() == 0:
                continue
            y = expert(x[rows]) * gate[rows, None].to(x.dtype)
            out.index_add_(0, rows, y)
        fraction = torch.bincount(choice, minlength=num_experts).float() / n
        aux = num_experts * torch.sum(fraction * probs.mean(dim=0))
        z = torch.logsumexp(logits, dim=-1).pow(2).mean()
        return out.view(shape), RouterStats(choice, gate, dropped, aux, z)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = SwitchMoE(cfg)

    def forward(self, x, cos, sin, capacity_factor):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        moe_out, stats = self.mlp(self.post_attention_layernorm(x), capacity_factor)
        return x + moe_out, stats


class SwitchOlmoe(nn.Module):
    """Parameter names match Hugging Face's OlmoeForCausalLM (`model.*`, `lm_head`)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.model.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.model.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, ids: torch.Tensor, capacity_factor: float | None = None):
        """ids [batch, time] -> logits [batch, time, vocab], per-layer RouterStats."""
        positions = torch.arange(ids.shape[1], device=ids.device)
        cos, sin = rotary_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta)
        x = self.model.embed_tokens(ids)
        stats = []
        for layer in self.model.layers:
            x, s = layer(x, cos, sin, capacity_factor)
            stats.append(s)
        return self.lm_head(self.model.norm(x)), stats

    def loss(self, ids: torch.Tensor, targets: torch.Tensor):
        """Cross-entropy plus the Switch load-balancing and ST-MoE z losses, at the training capacity."""
        logits, stats = self(ids, self.cfg.capacity_factor)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        aux = sum(s.aux_loss for s in stats)
        z = sum(s.z_loss for s in stats)
        total = ce + self.cfg.router_aux_loss_coef * aux + self.cfg.router_z_loss_coef * z
        return total, ce, stats

    def parameter_counts(self) -> dict:
        total = sum(p.numel() for p in self.parameters())
        one_expert = sum(p.numel() for p in self.model.layers[0].mlp.experts[0].parameters())
        all_experts = one_expert * self.cfg.num_experts * self.cfg.num_hidden_layers
        active = total - all_experts + one_expert * self.cfg.num_hidden_layers
        return {"total": total, "active_per_token": active, "active_fraction": active / total}
