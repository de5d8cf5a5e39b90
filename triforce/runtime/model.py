"""The readable fp32 reference of Pi0.5 (openpi semantics), the ground truth the engines are checked against.

Straightforward on purpose: every image slot (masked ones included) and every prompt slot go through the towers,
masks are applied as openpi applies them, and nothing is fused or precomputed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .checkpoint import EXPERT, LANG, PG, TOKEN_EMBEDDING, VISION
from .config import ModelConfig


def gelu_tanh(x):
    return F.gelu(x, approximate="tanh")


def rms_normalize(x, eps):
    """x / rms(x), computed in fp32 and returned in x's dtype (as openpi does)."""
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def rope(x, pos, base):
    """Half-split rotary embedding. x [..., S, D], pos [S]."""
    d = x.shape[-1]
    inv_freq = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float64, device=x.device) / d))
    ang = pos.double()[:, None] * inv_freq[None, :]
    cos, sin = torch.cos(ang).to(x.dtype), torch.sin(ang).to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def time_embedding(t: torch.Tensor, dim: int, min_period: float, max_period: float):
    """openpi's sinusoidal embedding of the flow time: [sin | cos], periods geometric from min to max."""
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float64, device=t.device)
    period = min_period * (max_period / min_period) ** fraction
    ang = t.double()[:, None] * (2 * math.pi / period)[None, :]
    return torch.cat([torch.sin(ang), torch.cos(ang)], dim=-1).float()


class ReferencePi05:
    """Eager Pi0.5. `weights`: name -> tensor as loaded by checkpoint.load_state. fp32 is the reference; bf16 is the
    straightforward half-precision port, used to measure the precision floor that any bf16 engine starts from."""

    def __init__(self, cfg: ModelConfig, weights: dict, device="cpu", dtype=torch.float32):
        self.cfg = cfg
        self.device = torch.device(device)
        self.dtype = dtype
        self.w = {k: v.to(self.device, dtype) for k, v in weights.items()}
        self.recorder = None   # calibration: called with (engine layer id, the GEMM's input as the engine sees it)

    def _rec(self, layer_id: str, x):
        if self.recorder is not None:
            self.recorder(layer_id, x)

    def _rec_out(self, layer_id: str, y):
        """Calibration of a layer whose output the engine may write in E4M3 (its real output, bias excluded)."""
        if self.recorder is not None:
            self.recorder.output(layer_id, y)

    # ── vision ────────────────────────────────────────────────────────────────────────────────────────────────
    def embed_images(self, images):
        """images float [N, H, W, 3] in [-1, 1] -> [N, tokens_per_image, prefix width]."""
        cfg, w, v = self.cfg, self.w, self.cfg.vision
        x = images.permute(0, 3, 1, 2)
        x = F.conv2d(x, w[f"{VISION}.embeddings.patch_embedding.weight"], w[f"{VISION}.embeddings.patch_embedding.bias"], stride=cfg.patch_size)
        x = x.flatten(2).transpose(1, 2) + w[f"{VISION}.embeddings.position_embedding.weight"]
        for i in range(v.depth):
            x = self._vision_layer(x, f"{VISION}.encoder.layers.{i}", f"vision.{i}")
        x = F.layer_norm(x, (v.width,), w[f"{VISION}.post_layernorm.weight"], w[f"{VISION}.post_layernorm.bias"], eps=cfg.norm_eps)
        return F.linear(x, w[f"{PG}.model.multi_modal_projector.linear.weight"], w[f"{PG}.model.multi_modal_projector.linear.bias"])

    def _vision_layer(self, x, name, lid):
        w, v, eps = self.w, self.cfg.vision, self.cfg.norm_eps
        lin = lambda t, p: F.linear(t, w[f"{name}.{p}.weight"], w[f"{name}.{p}.bias"])  # noqa: E731
        h = F.layer_norm(x, (v.width,), w[f"{name}.layer_norm1.weight"], w[f"{name}.layer_norm1.bias"], eps=eps)
        self._rec(f"{lid}.qkv", h)
        n, s, _ = h.shape
        heads = lambda t: t.view(n, s, v.num_heads, v.dim_head).transpose(1, 2)  # noqa: E731
        q, k, vv = heads(lin(h, "self_attn.q_proj")), heads(lin(h, "self_attn.k_proj")), heads(lin(h, "self_attn.v_proj"))
        att = (torch.softmax(q @ k.transpose(-1, -2) * v.dim_head ** -0.5, dim=-1) @ vv).transpose(1, 2).reshape(n, s, v.width)
        self._rec(f"{lid}.o", att)
        x = x + lin(att, "self_attn.out_proj")
        h = F.layer_norm(x, (v.width,), w[f"{name}.layer_norm2.weight"], w[f"{name}.layer_norm2.bias"], eps=eps)
        self._rec(f"{lid}.fc1", h)
        pre = F.linear(h, w[f"{name}.mlp.fc1.weight"])
        self._rec_out(f"{lid}.fc1", pre)
        act = gelu_tanh(pre + w[f"{name}.mlp.fc1.bias"])
        self._rec(f"{lid}.fc2", act)
        return x + lin(act, "mlp.fc2")

    # ── gemma towers ──────────────────────────────────────────────────────────────────────────────────────────
    def _attention(self, q_in, name, tower, pos, kv_prefix=None):
        """Projections + RoPE. Returns (q [H, S, D], k [S, D], v [S, D]); kv_prefix is prepended to k, v."""
        w = self.w
        s = q_in.shape[0]
        q = F.linear(q_in, w[f"{name}.self_attn.q_proj.weight"]).view(s, tower.num_heads, tower.dim_head).transpose(0, 1)
        k = F.linear(q_in, w[f"{name}.self_attn.k_proj.weight"])  # one kv head
        v = F.linear(q_in, w[f"{name}.self_attn.v_proj.weight"])
        q, k = rope(q, pos, self.cfg.rope_base), rope(k, pos, self.cfg.rope_base)
        return q, k, v

    @staticmethod
    def _attend(q, k, v, key_mask, dim_head):
        """q [H, S, D] over k, v [T, D] with a boolean key mask [S, T] (True = may attend)."""
        logits = (q @ k.T) * dim_head ** -0.5
        logits = logits.masked_fill(~key_mask[None], float("-inf"))
        return torch.softmax(logits, dim=-1) @ v

    def _mlp(self, h, name, lid):
        w = self.w
        gate = F.linear(h, w[f"{name}.mlp.gate_proj.weight"])
        up = F.linear(h, w[f"{name}.mlp.up_proj.weight"])
        self._rec_out(f"{lid}.gate_up", torch.cat([gate, up], -1))
        act = gelu_tanh(gate) * up
        self._rec(f"{lid}.down", act)
        return F.linear(act, w[f"{name}.mlp.down_proj.weight"])

    def prefix_kv(self, prefix_emb, prefix_valid):
        """Run the Gemma 2B prefix; return per-layer (k, v) and the position ids. Prefix attention is bidirectional
        over valid tokens."""
        cfg, w, p = self.cfg, self.w, self.cfg.prefix
        pos = torch.cumsum(prefix_valid.long(), 0) - 1
        mask = prefix_valid[None, :].expand(prefix_emb.shape[0], -1)
        x, cache = prefix_emb, []
        for i in range(p.depth):
            name = f"{LANG}.layers.{i}"
            xn = rms_normalize(x, cfg.norm_eps)
            self._rec(f"prefix.{i}.qkv", xn)          # the engine folds (1 + w) into the weights
            q, k, v = self._attention(xn * (1 + w[f"{name}.input_layernorm.weight"]), name, p, pos)
            cache.append((k, v))
            att = self._attend(q, k, v, mask, p.dim_head).transpose(0, 1).reshape(x.shape[0], -1)
            self._rec(f"prefix.{i}.o", att)
            x = x + F.linear(att, w[f"{name}.self_attn.o_proj.weight"])
            xn = rms_normalize(x, cfg.norm_eps)
            self._rec(f"prefix.{i}.gate_up", xn)
            x = x + self._mlp(xn * (1 + w[f"{name}.post_attention_layernorm.weight"]), name, f"prefix.{i}")
        return cache, pos

    def time_condition(self, t):
        """The adaRMS condition for flow time t (a 1-element tensor)."""
        w, e, cfg = self.w, self.cfg.expert, self.cfg
        emb = time_embedding(t, e.width, cfg.time_min_period, cfg.time_max_period).to(self.dtype)
        h = F.silu(F.linear(emb, w["time_mlp_in.weight"], w["time_mlp_in.bias"]))
        return F.silu(F.linear(h, w["time_mlp_out.weight"], w["time_mlp_out.bias"]))[0]

    def _ada_norm(self, x, name, cond):
        """adaRMSNorm: x̂ (1 + scale) + shift, and the gate for the residual."""
        mod = F.linear(cond, self.w[f"{name}.dense.weight"], self.w[f"{name}.dense.bias"])
        scale, shift, gate = mod.chunk(3, dim=-1)
        return rms_normalize(x, self.cfg.norm_eps) * (1 + scale) + shift, gate

    def velocity(self, x_t, t, cache, prefix_valid, n_prefix_valid):
        """The action expert: predicted velocity for noisy actions x_t [H, action_dim] at time t."""
        w, e = self.w, self.cfg.expert
        cond = self.time_condition(t)
        x = F.linear(x_t, w["action_in_proj.weight"], w["action_in_proj.bias"])
        horizon = x.shape[0]
        pos = n_prefix_valid + torch.arange(horizon, device=x.device)
        key_mask = torch.cat([prefix_valid, torch.ones(horizon, dtype=torch.bool, device=x.device)])[None].expand(horizon, -1)
        for i in range(e.depth):
            name = f"{EXPERT}.model.layers.{i}"
            h, gate = self._ada_norm(x, f"{name}.input_layernorm", cond)
            self._rec(f"expert.{i}.qkv", h)
            q, k, v = self._attention(h, name, e, pos)
            pk, pv = cache[i]
            att = self._attend(q, torch.cat([pk, k]), torch.cat([pv, v]), key_mask, e.dim_head).transpose(0, 1).reshape(horizon, -1)
            self._rec(f"expert.{i}.o", att)
            x = x + F.linear(att, w[f"{name}.self_attn.o_proj.weight"]) * gate
            h, gate = self._ada_norm(x, f"{name}.post_attention_layernorm", cond)
            self._rec(f"expert.{i}.gate_up", h)
            x = x + self._mlp(h, name, f"expert.{i}") * gate
        h, _ = self._ada_norm(x, f"{EXPERT}.model.norm", cond)
        return F.linear(h, w["action_out_proj.weight"], w["action_out_proj.bias"])

    # ── the whole inference ───────────────────────────────────────────────────────────────────────────────────
    @torch.no_grad()
    def sample_actions(self, images, image_masks, tokens, token_mask, noise):
        """images [slots, H, W, 3], image_masks [slots], tokens/token_mask [L], noise [H, A] -> actions [H, A]."""
        cfg = self.cfg
        images, noise = images.to(self.dtype), noise.to(self.dtype)
        img_emb = self.embed_images(images)                                   # [slots, T, width]
        txt_emb = self.w[TOKEN_EMBEDDING][tokens] * math.sqrt(cfg.prefix.width)
        prefix = torch.cat([img_emb.reshape(-1, cfg.prefix.width), txt_emb])
        valid = torch.cat([image_masks.repeat_interleave(cfg.tokens_per_image), token_mask])
        cache, _ = self.prefix_kv(prefix, valid)
        n_valid = valid.sum()
        x, dt = noise, -1.0 / cfg.num_steps
        for step in range(cfg.num_steps):
            t = torch.tensor([1.0 + step * dt], device=x.device)
            x = x + dt * self.velocity(x, t, cache, valid, n_valid)
        return x.float()
