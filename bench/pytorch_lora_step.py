#!/usr/bin/env python3
"""The training step `peft bench` measures, written in plain PyTorch: the reference point for
`peft bench --compare-python` (or bench/compare_python.sh).

A minimal Llama-architecture causal LM (RMSNorm, rotary embeddings in the rotate-half form,
SwiGLU MLP, multi-head attention without GQA, untied head) with random weights; LoRA (r 8,
alpha 8, no dropout) added by hand to q_proj and v_proj, or every parameter trained ("full").
One step = forward, causal-LM loss, backward, AdamW (lr 1e-4, weight decay 0.01), zero_grad:
the same work as peft.cpp's StepBench (src/cli/bench_step.cpp).

--dtype bfloat16 (LoRA): the frozen base in bfloat16 and the LoRA factors in float32, as Python
peft 0.13 runs a bfloat16 model (autocast_adapter_dtype: the adapter's input is cast to float32
and its output back); RMSNorm computed in float32 as transformers' LlamaRMSNorm, logits upcast
to float32 for the loss as LlamaForCausalLM.

Run with the interpreter that has Debian's python3-torch:
  /usr/bin/python3 bench/pytorch_lora_step.py --method lora            # prints tokens/s
  /usr/bin/python3 bench/pytorch_lora_step.py --method full --json     # one JSON line
"""
import argparse
import json
import math
import re
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def rss():
    """(VmRSS, VmHWM) of this process in KiB."""
    with open("/proc/self/status") as f:
        s = f.read()
    return tuple(int(re.search(k + r":\s+(\d+)", s).group(1)) for k in ("VmRSS", "VmHWM"))


def reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        dt = x.dtype
        x = x.float()
        var = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(var + self.eps)).to(dt)


class LoRALinear(nn.Module):
    """y = W x + (alpha / r) * B A x, with W frozen, A Kaiming-uniform and B zero."""

    def __init__(self, base, r=8, alpha=8):
        super().__init__()
        self.base = base
        self.lora_A = nn.Linear(base.in_features, r, bias=False)
        self.lora_B = nn.Linear(r, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.scaling = alpha / r

    def forward(self, x):
        y = self.base(x)
        xa = x.to(self.lora_A.weight.dtype)
        return y + (self.lora_B(self.lora_A(xa)) * self.scaling).to(y.dtype)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Attention(nn.Module):
    def __init__(self, hidden, heads):
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.q_proj = nn.Linear(hidden, hidden, bias=False)
        self.k_proj = nn.Linear(hidden, hidden, bias=False)
        self.v_proj = nn.Linear(hidden, hidden, bias=False)
        self.o_proj = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x, cos, sin, bias):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        scores = q @ k.transpose(2, 3) / math.sqrt(self.head_dim) + bias
        out = torch.softmax(scores, dim=-1) @ v
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, hidden, inter):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inter, bias=False)
        self.up_proj = nn.Linear(hidden, inter, bias=False)
        self.down_proj = nn.Linear(inter, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, hidden, heads, inter):
        super().__init__()
        self.self_attn = Attention(hidden, heads)
        self.mlp = MLP(hidden, inter)
        self.input_layernorm = RMSNorm(hidden)
        self.post_attention_layernorm = RMSNorm(hidden)

    def forward(self, x, cos, sin, bias):
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, bias)
        return h + self.mlp(self.post_attention_layernorm(h))


class LlamaLM(nn.Module):
    def __init__(self, hidden, layers, heads, inter, vocab, theta=10000.0):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, hidden)
        self.layers = nn.ModuleList(Block(hidden, heads, inter) for _ in range(layers))
        self.norm = RMSNorm(hidden)
        self.lm_head = nn.Linear(hidden, vocab, bias=False)
        hd = hidden // heads
        self.register_buffer("inv_freq", 1.0 / theta ** (torch.arange(0, hd, 2).float() / hd), persistent=False)

    def forward(self, ids, labels):
        b, t = ids.shape
        x = self.embed_tokens(ids)
        pos = torch.arange(t).float()
        freqs = pos[:, None] * self.inv_freq.float()[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[None, None].to(x.dtype), emb.sin()[None, None].to(x.dtype)
        bias = torch.full((t, t), torch.finfo(x.dtype).min, dtype=x.dtype).triu(1)[None, None]
        for layer in self.layers:
            x = layer(x, cos, sin, bias)
        logits = self.lm_head(self.norm(x)).float()
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--method", choices=["lora", "full"], default="lora")
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--intermediate", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: PyTorch's default)")
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--json", action="store_true", help="print one JSON line (for peft bench)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="the frozen base's dtype (bfloat16: LoRA only, the factors stay float32)")
    ap.add_argument("--kv_heads", type=int, default=0, help="key/value heads (0: --heads; GQA is not modelled here)")
    ap.add_argument("--rope_theta", type=float, default=10000.0)
    a = ap.parse_args()
    if a.kv_heads not in (0, a.heads):
        ap.error("--kv_heads other than --heads (grouped-query attention) is not modelled by this script")
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    rss_start = rss()[0]
    torch.manual_seed(0)
    model = LlamaLM(a.hidden, a.layers, a.heads, a.intermediate, a.vocab, a.rope_theta)
    if a.dtype == "bfloat16":
        if a.method != "lora":
            ap.error("--dtype bfloat16 is for --method lora (a bfloat16 base under float32 adapters)")
        model = model.to(torch.bfloat16)
    targeted = 0
    if a.method == "lora":
        for p in model.parameters():
            p.requires_grad_(False)
        for layer in model.layers:
            layer.self_attn.q_proj = LoRALinear(layer.self_attn.q_proj, a.r)
            layer.self_attn.v_proj = LoRALinear(layer.self_attn.v_proj, a.r)
            targeted += 2
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    total = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    ids = torch.randint(a.vocab, (a.batch, a.seq))

    before = rss()[0]
    reset = reset_peak_rss()
    base = rss()[0]
    times, losses = [], []
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        loss = model(ids, ids)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    _, hwm = rss()
    step_s = statistics.median(times)
    r = {
        "method": a.method, "implementation": "pytorch", "torch": torch.__version__, "dtype": a.dtype,
        "trainable": trainable, "total": total, "targeted_modules": targeted,
        "threads": torch.get_num_threads(),
        "rss_start_mib": rss_start / 1024, "rss_model_mib": before / 1024, "peak_rss_mib": hwm / 1024,
        "step_peak_mib": (hwm - (base if reset else before)) / 1024, "peak_reset": reset,
        "step_s": times, "median_step_s": step_s, "tokens_per_s": a.batch * a.seq / step_s,
        "first_loss": losses[0], "last_loss": losses[-1],
    }
    if a.json:
        print(json.dumps(r))
    else:
        print(f"PyTorch {torch.__version__} {a.method}: {trainable} trainable of {total} "
              f"({100 * trainable / total:.3f}%), {r['tokens_per_s']:.1f} tokens/s "
              f"({1000 * step_s:.0f} ms/step, {torch.get_num_threads()} threads), "
              f"step peak {r['step_peak_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
