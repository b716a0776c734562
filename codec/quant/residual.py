"""The residual quantizer stack: stage i quantizes what stages 1..i-1 left over.

Gradient wiring follows docs/quantizers.md section 7:
- the chain is built from exact hard codewords, r_{i+1} = r_i - sg(c_i), and each stage's
  auxiliary loss sees r_i = z - sum_{j<i} sg(c_j), so every commitment reaches the encoder;
- with only STE-family stages the output is z + sg(sum c - z) (encoder Jacobian exactly I);
- with any DiVeQ-family stage, one global DiVeQ step over the total,
  z^ = z + ||c' - z|| sg(v), where c' keeps the DiVeQ stages' Parameter gradients;
- else, with any rotation-trick stage, the total rotated onto from z: z^ = sg(lambda R) z with
  lambda R carrying z onto sum c (docs/quantizers.md section 12), value sum c;
- a passthrough stage (SF-DiVeQ during its warm-up) makes the output of every row that uses
  it that row's input z (the identity), while the chain still subtracts its hard symbol, so
  the stages after it collect, update and initialise on their own remainders, not on zeros;
- a stage with a low-dimensional projection adds t - sg(t), t = out(p + sg(c - p)),
  p = in(sg(r)): zero in value, it trains both projections as DAC's per-stage STE would,
  without touching the encoder's identity gradient.
In eval mode the output is the plain sum of lookups, the same floats ``decode`` produces.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from codec.quant import build_quantizer
from codec.quant.config import QuantizerConfig, StageConfig
from codec.quant.directional import directional_step, rotate_onto
from codec.quant.distributed import all_reduce_sum
from codec.quant.stats import UsageWindow, code_counts, effective_rank, norm_spread, stage_stats
from codec.quant.tables import StackTables


@dataclass
class RVQOutput:
    """quantized: [B, D, F] float; codes: [B, n, F] int64, n = all N stages in training (every
    stage runs; ``n_q`` says which count per item) and the requested n_q in eval; loss: scalar
    (sum of stage losses); stage_losses: [n] float; counts: per stage [K_i] code counts over
    active positions; n_q: [B] int64 number of stages each item used."""

    quantized: Tensor
    codes: Tensor
    loss: Tensor
    stage_losses: Tensor
    counts: list[Tensor]
    n_q: Tensor


class ResidualStage(nn.Module):
    """One stage: optional projection latent_dim -> codebook_dim -> latent_dim, a quantizer of
    the configured kind, and a window of code usage for statistics."""

    def __init__(self, latent_dim: int, cfg: StageConfig, stats_window: int) -> None:
        super().__init__()
        dim = cfg.codebook_dim or latent_dim
        self.projected = dim != latent_dim
        self.in_proj = nn.Linear(latent_dim, dim) if self.projected else nn.Identity()
        self.out_proj = nn.Linear(dim, latent_dim) if self.projected else nn.Identity()
        self.quantizer = build_quantizer(cfg.kind, dim, cfg.codebook_size, **cfg.options)
        self.usage = UsageWindow(cfg.codebook_size, stats_window)
        self.kind = cfg.kind

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    def decode(self, codes: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """Codes [N] -> latent-space codeword [N, D] in ``dtype``: a row of the table of every
        codeword already projected back to the latent space (``tables``)."""
        _, table = self.tables()
        return table[codes].to(dtype)

    def tables(self) -> tuple[Tensor, Tensor]:
        """(codebook [K, d], out_proj(codebook) [K, D]), detached float32, from the current
        weights (computed per call: a streamer's ``StackTables`` keeps them for a stream)."""
        with torch.no_grad():
            book = self.quantizer.codebook().detach().float()
            table = _apply(self.out_proj, book).contiguous() if self.projected else book
        return book, table


class ResidualQuantizer(nn.Module):
    """Residual stack over latents [B, D, F]; see the module docstring for the gradient rules."""

    def __init__(self, latent_dim: int, cfg: QuantizerConfig) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.dropout = cfg.dropout
        self.stages = nn.ModuleList(
            ResidualStage(latent_dim, s, cfg.stats_window) for s in cfg.resolved_stages()
        )
        self.last_counts: list[Tensor] | None = None

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def codebook_sizes(self) -> list[int]:
        return [s.codebook_size for s in self.stages]

    def check_n_q(self, n_q: int | None) -> int:
        """The number of stages to use: n_q, or all when None; ValueError outside [1, N]."""
        n = self.num_stages if n_q is None else int(n_q)
        if not 1 <= n <= self.num_stages:
            raise ValueError(f"n_q must be in [1, {self.num_stages}], got {n_q}")
        return n

    def sample_n_q(self, batch: int, device: torch.device) -> Tensor:
        """Quantizer dropout (per item, as DAC): with probability ``dropout`` an item uses
        n ~ U{1..N} stages, otherwise all N. Returns int64 [batch]."""
        n = torch.full((batch,), self.num_stages, dtype=torch.long, device=device)
        drop = torch.rand(batch, device=device) < self.dropout
        random_n = torch.randint(1, self.num_stages + 1, (batch,), device=device)
        return torch.where(drop, random_n, n)

    @staticmethod
    def _rows(z: Tensor) -> Tensor:
        b, d, f = z.shape
        return z.transpose(1, 2).reshape(b * f, d)

    @staticmethod
    def _unrows(x: Tensor, b: int, f: int) -> Tensor:
        return x.reshape(b, f, -1).transpose(1, 2)

    @torch.no_grad()
    def encode(self, z: Tensor, n_q: int | None = None) -> Tensor:
        """Latents float [B, D, F] -> codes int64 [B, n_q, F] (all stages when n_q is None);
        float64 latents take the exact chain (float64 residuals and search)."""
        return StackTables(self, z.dtype).encode(z, self.check_n_q(n_q))

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Codes int64 [B, n, F] (n <= num_stages) -> latents float [B, D, F], sum of lookups."""
        self.check_n_q(codes.shape[1])
        return StackTables(self).decode(codes)

    def forward(self, z: Tensor, n_q: int | None = None, frame_mask: Tensor | None = None) -> RVQOutput:
        """Quantize latents float [B, D, F].

        Training: per-item quantizer dropout (unless ``n_q`` forces a count), stage losses,
        codebook updates and usage windows. Eval: exactly ``decode(encode(z, n_q))`` with
        n_q stages (all if None). ``frame_mask`` bool [B, F] marks real (non-padding) frames
        for losses and statistics.
        """
        b, _, f = z.shape
        x = self._rows(z)
        if self.training:
            n_items = self.sample_n_q(b, z.device) if n_q is None else torch.full(
                (b,), self.check_n_q(n_q), dtype=torch.long, device=z.device)
        else:
            n_items = torch.full((b,), self.check_n_q(n_q), dtype=torch.long, device=z.device)
        row_nq = n_items.repeat_interleave(f)
        valid = None if frame_mask is None else frame_mask.reshape(-1).bool()
        # Training runs every stage on every rank even when dropout masks all its rows: EMA,
        # DiVeQ and usage statistics all-reduce each step, so a skipped stage would hang DDP.
        n_run = self.num_stages if self.training else int(n_items.max())

        r = x
        hard_sum = torch.zeros_like(x)
        diff_sum = torch.zeros_like(x)
        proj_terms = torch.zeros_like(x)
        any_diff = any_rotation = False
        sigma = 0.0
        # rows whose output is the input: a stage they use is a passthrough (SF-DiVeQ warm-up)
        identity = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        losses, codes, counts, inputs = [], [], [], []
        for i, stage in enumerate(self.stages[:n_run]):
            active = row_nq > i
            if valid is not None:
                active = active & valid
            p = stage.in_proj(r)
            out = stage.quantizer(p, mask=active)
            if out.passthrough:
                identity |= row_nq > i
            keep = active.unsqueeze(1).to(x.dtype)
            # eval: the very rows ``decode`` looks up, so the output is decode(encode(z))
            c_lat = stage.out_proj(out.codeword) if self.training else stage.decode(out.codes, x.dtype)
            hard = c_lat.detach() * keep
            hard_sum = hard_sum + hard
            any_rotation |= bool(stage.quantizer.rotates) and bool(active.any())
            if self.training and stage.quantizer.differentiable_codeword:
                any_diff = True
                sigma = max(sigma, float(stage.quantizer.sigma))
                diff_sum = diff_sum + c_lat * keep
            else:
                diff_sum = diff_sum + hard
            if self.training and stage.projected:
                p_det = stage.in_proj(r.detach())
                t = stage.out_proj(p_det + (out.codeword.detach() - p_det).detach())
                proj_terms = proj_terms + (t - t.detach()) * keep
            r = r - hard
            losses.append(out.loss)
            codes.append(out.codes)
            counts.append(code_counts(out.codes, stage.codebook_size, active))
            if self.training:
                inputs.append(p.detach()[active])

        if not self.training:
            quantized = hard_sum
        elif any_diff:
            quantized = x + directional_step(x, diff_sum, sigma) + proj_terms
        elif any_rotation:
            quantized = rotate_onto(x, hard_sum) + proj_terms
        else:
            quantized = x + (hard_sum - x).detach() + proj_terms
        if self.training and bool(identity.any()):
            quantized = torch.where(identity[:, None], x, quantized)

        if self.training:
            counts = self._sync_counts(counts)
            for stage, c in zip(self.stages, counts):
                stage.usage.update(c)
        self.last_counts = [c.detach() for c in counts]
        if self.training:  # what each stage received, for the collapse measures of ``statistics``
            self.last_inputs = inputs
        stage_losses = torch.stack(losses)
        return RVQOutput(
            quantized=self._unrows(quantized, b, f),
            codes=torch.stack(codes, dim=1).reshape(b, f, n_run).transpose(1, 2),
            loss=stage_losses.sum(),
            stage_losses=stage_losses,
            counts=counts,
            n_q=n_items,
        )

    @staticmethod
    def _sync_counts(counts: list[Tensor]) -> list[Tensor]:
        """All-reduce every stage's counts in one call, so usage windows match on all ranks."""
        sizes = [c.numel() for c in counts]
        flat = all_reduce_sum(torch.cat(counts))
        return list(flat.split(sizes))

    def training_state_keys(self) -> list[str]:
        """State-dict keys (relative to this module) of buffers that only training reads: every
        submodule's ``TRAINING_STATE`` (quantizers, restart counters, usage windows)."""
        return [f"{name}.{b}" if name else b for name, m in self.named_modules()
                for b in getattr(m, "TRAINING_STATE", ())]

    def statistics(self, counts: list[Tensor] | None = None) -> list[dict[str, float]]:
        """Per-stage perplexity / utilisation of ``counts`` (default: the last forward's) and,
        over the usage window, window_perplexity / window_utilisation / dead_codes; EMA stages
        also report ema_dead_codes (#{N_k < threshold}). The collapse measures: norm_spread of
        the stage's codebook (in its search space) and, after a training forward,
        effective_rank of the vectors the stage received there (its active rows; NaN before
        any training forward)."""
        counts = self.last_counts if counts is None else counts
        inputs = getattr(self, "last_inputs", [])
        out = []
        for i, stage in enumerate(self.stages):
            c = counts[i] if counts is not None and i < len(counts) else torch.zeros(stage.codebook_size)
            s = stage_stats(c, stage.usage)
            s["norm_spread"] = norm_spread(stage.quantizer.codebook())
            s["effective_rank"] = effective_rank(inputs[i]) if i < len(inputs) else math.nan
            dead = stage.quantizer.dead_count()
            if dead is not None:
                s["ema_dead_codes"] = float(dead)
            out.append(s)
        return out



def _apply(layer: nn.Module, x: Tensor) -> Tensor:
    """Run an Identity or Linear projection in x's dtype (weights cast, module untouched)."""
    if isinstance(layer, nn.Linear):
        return nn.functional.linear(x, layer.weight.to(x.dtype), layer.bias.to(x.dtype))
    return x
