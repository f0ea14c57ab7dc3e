#!/usr/bin/env python3
"""Side-by-side: mixq's mixed-precision search vs NVIDIA Model Optimizer ``mtq.auto_quantize``
(method="gradient"), on CPU, on stories260K.

Both tools search NVFP4 W4A4 (max weight scales = ModelOpt's NVFP4_DEFAULT_CFG) / FP8 W8A8 / BF16
per group (q/k/v together, gate/up together, o_proj and down_proj alone) under an effective-bits
budget, with the same calibration tokens (mixq's built-in calibration text, pre-tokenized:
calib/data/builtin_calibration.tok512.u16.bin -> 11 sequences x 256 tokens, all 11 calibrate,
the first 8 score) and are evaluated on held-out TinyStories (ctx 512 non-overlapping windows,
fresh context each, mean NLL over every token after a window's first).

ModelOpt on CPU: NVFP4_DEFAULT_CFG fake-quant ("dynamic" block quant) asserts ``amax.is_cuda``
in modelopt/torch/quantization/tensor_quant.py::_dynamic_block_quantize_impl and otherwise runs
the Triton kernel fp4_kernel_hopper.fp4_fake_quant_block (CUDA only; Triton 3.x's CPU interpreter
rejects its block pointers). This script replaces tensor_quant.dynamic_block_quantize_op with a
line-by-line torch transcription of that kernel (zero-padded partial blocks, E4M3 block scales
with the global scale amax/(6*448), scales < 1e-5 -> 1, the kernel's E2M1 rounding thresholds).
``--check-kernel`` verifies it bit-for-bit against ModelOpt's own static NVFP4 Triton kernel run
under TRITON_INTERPRET=1 (same helpers fp8_quantize_scale / fp4_round_magnitude). FP8 fake quant
uses ModelOpt's own CPU path (fp8_eager). Everything else (calibration, scoring, ILP) is ModelOpt.

Usage (from the repository root; ~5 min on 2 cores):
    .venv/bin/python bench/autoquant_vs_modelopt.py --mixq /tmp/mixq-mo --md bench/autoquant_vs_modelopt.md
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
MODEL = Path("/work/shared/models/stories260K")
EVAL = Path("/work/shared/data/tinystories/TinyStories-valid-reduced.tok512.u16.bin")
CALIB = REPO / "calib" / "data" / "builtin_calibration.tok512.u16.bin"
SEQ_LEN, N_CALIB, N_SCORE, EVAL_CTX = 256, 11, 8, 512
COMMON_BITS = {"nvfp4": 4.5, "fp8": 8.0, "bf16": 16.0}
SHORT = {"nvfp4": "4", "fp8": "8", "bf16": "B"}
ROLES = ["qkv", "o", "gate_up", "down"]


def role_of(name: str) -> str:
    leaf = name.rsplit(".", 1)[-1]
    return {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "self_attn": "qkv", "o_proj": "o",
            "gate_proj": "gate_up", "up_proj": "gate_up", "mlp": "gate_up", "down_proj": "down"}[leaf]


def layer_of(name: str) -> int:
    return int(re.search(r"layers\.(\d+)\.", name + ".").group(1))


def linear_sizes() -> dict[str, int]:
    """numel of each of the 35 decoder linear weights (lm_head is tied to the embedding)."""
    cfg = json.loads((MODEL / "config.json").read_text())
    h, i, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    out = {}
    for L in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{L}."
        out |= {p + "self_attn.q_proj": q * h, p + "self_attn.k_proj": kv * h, p + "self_attn.v_proj": kv * h,
                p + "self_attn.o_proj": h * q, p + "mlp.gate_proj": i * h, p + "mlp.up_proj": i * h,
                p + "mlp.down_proj": h * i}
    return out


def common_bits(assign: dict[str, str]) -> float:
    """weights x bits over all 35 linear weights (NVFP4 4.5, FP8 8, BF16 16) / weights."""
    sizes = linear_sizes()
    assert set(assign) == set(sizes), sorted(set(sizes) ^ set(assign))
    return sum(sizes[n] * COMMON_BITS[assign[n]] for n in sizes) / sum(sizes.values())


def summary(assign: dict[str, str]) -> str:
    """per layer: formats of qkv, o, gate_up, down (4 = NVFP4, 8 = FP8, B = BF16)."""
    per = {}
    for n, f in assign.items():
        per.setdefault(layer_of(n), {})[role_of(n)] = SHORT[f]
    return " ".join("".join(per[L][r] for r in ROLES) for L in sorted(per))


def eval_windows() -> list[np.ndarray]:
    toks = np.fromfile(EVAL, dtype="<u2").astype(np.int64)
    return [toks[a:a + EVAL_CTX] for a in range(0, len(toks), EVAL_CTX) if len(toks[a:a + EVAL_CTX]) >= 2]


def calib_sequences() -> list[np.ndarray]:
    toks = np.fromfile(CALIB, dtype="<u2").astype(np.int64)
    assert len(toks) >= N_CALIB * SEQ_LEN, len(toks)
    return [toks[k * SEQ_LEN:(k + 1) * SEQ_LEN] for k in range(N_CALIB)]  # = mixq's split_sequences


# ------------------------------------------------------------------------------------------------
# mixq
# ------------------------------------------------------------------------------------------------

RECIPE = """name: bench_nvfp4max_fp8_{tag}
description: side-by-side with ModelOpt auto_quantize (NVFP4_DEFAULT_CFG = max weight scales, FP8_DEFAULT_CFG)
calibration:
  data: {calib}
  samples: {n_calib}
  seq_len: {seq_len}
search:
  effective_bits: {budget}
  candidates:
    - format: nvfp4
      weights: max
    - format: fp8
  method: fisher
  score_samples: {n_score}
  disable: ["lm_head"]
kv_cache: none
export:
  layout: modelopt
"""


def run_mixq(mixq: str, budget: float, work: Path) -> dict:
    tag = f"{budget:.1f}".replace(".", "p")
    recipe = work / f"mixq_{tag}.yaml"
    recipe.write_text(RECIPE.format(tag=tag, calib=CALIB, n_calib=N_CALIB, seq_len=SEQ_LEN, budget=budget,
                                    n_score=N_SCORE))
    out = work / f"mixq_{tag}"
    cmd = [mixq, "quantize", "--model", str(MODEL), "--recipe", str(recipe), "--out", str(out), "--calib", str(CALIB),
           "--eval", str(EVAL), "--eval-ctx", str(EVAL_CTX), "--force", "--quiet"]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t0
    if p.returncode != 0:
        raise RuntimeError(f"mixq failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    s = p.stdout
    eff = float(re.search(r"effective bits over all linears: ([\d.]+)", s).group(1))
    m = re.search(r"source ([\d.]+), fake-quant ([\d.]+), export ([\d.]+)", s)
    tm = re.search(r"time:\s+([\d.]+)s \(load ([\d.]+)s, calibrate ([\d.]+)s, score \+ solve ([\d.]+)s", s)
    rec = json.loads((Path(str(out) + ".run") / "search.json").read_text())
    assign = {}
    for g in rec["groups"]:
        for mod in g["modules"]:
            assign[mod] = g["chosen"]
    return {"tool": "mixq", "budget": budget, "own_bits": eff, "common_bits": common_bits(assign),
            "ppl_source": float(m.group(1)), "ppl_fakequant": float(m.group(2)), "ppl": float(m.group(3)),
            "search_s": float(tm.group(3)) + float(tm.group(4)), "total_s": float(tm.group(1)), "wall_s": wall,
            "assign": assign, "summary": summary(assign), "cmd": " ".join(cmd), "stdout": s,
            "proven_optimal": rec.get("proven_optimal")}


# ------------------------------------------------------------------------------------------------
# ModelOpt
# ------------------------------------------------------------------------------------------------


def nvfp4_fake_quant_torch(x, amax, block=16):
    """torch transcription of modelopt/torch/kernels/quantization/gemm/fp4_kernel_hopper.py
    fp4_fake_quant_kernel (dynamic NVFP4 fake quant: per-16 block max, E4M3 block scale with
    global scale amax / (6 * 448), E2M1 rounding by the kernel's thresholds)."""
    import torch
    import torch.nn.functional as F

    shp, dt = x.shape, x.dtype
    x2 = x.reshape(-1, shp[-1]).float()
    M, N = x2.shape
    t = F.pad(x2, (0, (-N) % block)).view(M, -1, block)  # boundary_check + padding_option="zero"
    gs = (amax.float().reshape(-1).amax() / (6.0 * 448.0)).to(x2.device)
    gs = torch.where(gs > 0, gs, torch.full_like(gs, 1e-12))
    bm = t.abs().amax(-1, keepdim=True)
    s = torch.clamp(bm / (6.0 * gs), max=448.0).to(torch.float8_e4m3fn).float() * gs  # fp8_quantize_scale
    s = torch.where(s >= 1e-5, s, torch.ones_like(s))
    a = t.abs() / s
    q = torch.where(a <= 0.25, 0.0, torch.where(a < 0.75, 0.5, torch.where(a <= 1.25, 1.0, torch.where(
        a < 1.75, 1.5, torch.where(a <= 2.5, 2.0, torch.where(a < 3.5, 3.0, torch.where(a <= 5.0, 4.0, 6.0)))))))
    y = q * s
    y = torch.where(t >= 0, y, -y)
    return y.reshape(M, -1)[:, :N].reshape(shp).to(dt)


def install_cpu_nvfp4():
    import modelopt.torch.quantization.tensor_quant as tq

    orig = tq.dynamic_block_quantize_op

    def op(inputs, block_size, amax, num_bits, exponent_bits, scale_num_bits, scale_exponent_bits):
        if (num_bits, exponent_bits, scale_num_bits, scale_exponent_bits) == (4, 2, 8, 4) and not inputs.is_cuda:
            return nvfp4_fake_quant_torch(inputs, amax, block_size)
        return orig(inputs, block_size, amax, num_bits, exponent_bits, scale_num_bits, scale_exponent_bits)

    tq.dynamic_block_quantize_op = op


def check_kernel() -> str:
    """Compare the transcription with ModelOpt's static NVFP4 Triton kernel under TRITON_INTERPRET=1
    (block amax = the block max, i.e. the dynamic case). Runs in a subprocess (the env var must be
    set before triton decorates the kernels)."""
    code = r"""
import os, sys, types, contextlib
os.environ["TRITON_INTERPRET"] = "1"
import torch, triton, triton.language as tl
sys.path.insert(0, %r)
from autoquant_vs_modelopt import nvfp4_fake_quant_torch
import modelopt.torch.kernels.quantization.common.nvfp4_quant as nq
@triton.jit
def _isnan(x):
    return x != x
nq.libdevice = types.SimpleNamespace(isnan=_isnan)
from modelopt.torch.kernels.quantization.gemm import fp4_kernel
torch.cuda.device = lambda d: contextlib.nullcontext()
g = torch.Generator().manual_seed(0)
bad = 0
for scale in (1e-3, 1.0, 30.0):
    x = torch.randn(64, 176, generator=g) * scale
    x[:, 172:] = 0; x[0, :16] = 0; x[1, :8] *= 1e4
    amax = x.abs().amax()
    y = fp4_kernel.static_blockwise_fp4_fake_quant(x, x.view(64, -1, 16).abs().amax(-1), amax)
    y2 = nvfp4_fake_quant_torch(x[:, :172].contiguous(), amax)
    bad += int((y[:, :172] != y2).sum())
print("MISMATCHES", bad)
""" % str(Path(__file__).resolve().parent)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    m = re.search(r"MISMATCHES (\d+)", p.stdout)
    if not m:
        return f"kernel check could not run: {p.stderr[-400:]}"
    return f"{m.group(1)} mismatching elements of 3 x 64 x 172 (torch transcription vs ModelOpt static NVFP4 Triton kernel, TRITON_INTERPRET=1)"


def load_hf(tied_head: bool):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(MODEL), dtype=torch.float32).eval()
    if tied_head:
        # mixq has no lm_head linear (tie_word_embeddings): logits = h @ embed^T. Make ModelOpt see
        # the same 35 linears by computing the tied head outside nn.Linear (same math).
        class TiedHead(nn.Module):
            def __init__(self, emb):
                super().__init__()
                self._emb = [emb]

            def forward(self, x):
                return F.linear(x, self._emb[0].weight)

        m.lm_head = TiedHead(m.model.embed_tokens)
    return m


def ppl(model) -> tuple[float, int]:
    import torch
    import torch.nn.functional as F

    nll, n = 0.0, 0
    with torch.no_grad():
        for w in eval_windows():
            ids = torch.from_numpy(w)[None]
            logits = model(input_ids=ids).logits[0].double()
            nll += float(F.cross_entropy(logits[:-1], ids[0, 1:], reduction="sum"))
            n += len(w) - 1
    return float(np.exp(nll / n)), n


def recipe_name(r) -> str:
    s = str(r)
    if "NONE" in s or "None" in s or "16" == s:
        return "bf16"
    if "NVFP4" in s:
        return "nvfp4"
    if "FP8" in s:
        return "fp8"
    raise ValueError(s)


def run_modelopt(budget: float, variant: str, work: Path) -> dict:
    """variant "matched": down_proj restricted to {FP8, BF16} (mixq's search space: NVFP4 needs K % 16 == 0,
    down_proj has K = 172); "default": ModelOpt's own search space (its NVFP4 kernel zero-pads the last block)."""
    import torch
    import modelopt.torch.quantization as mtq

    torch.manual_seed(0)
    model = load_hf(tied_head=True)
    seqs = [torch.from_numpy(s)[None] for s in calib_sequences()]

    def forward_step(model, batch):
        return model(input_ids=batch, labels=batch)  # HF shifts: next-token CE, labels = input_ids

    def loss_func(output, batch):
        return output.loss

    kw = dict(constraints={"effective_bits": budget}, quantization_formats=[mtq.NVFP4_DEFAULT_CFG, mtq.FP8_DEFAULT_CFG],
              data_loader=seqs, forward_step=forward_step, loss_func=loss_func, num_calib_steps=N_CALIB,
              num_score_steps=N_SCORE, verbose=True, method="gradient", disabled_layers=["*lm_head*"])
    if variant == "matched":
        kw["module_search_spaces"] = [{"module_name_patterns": ["*down_proj*"],
                                       "quantization_formats": [mtq.FP8_DEFAULT_CFG], "allow_no_quant": True}]
    log = work / f"modelopt_{variant}_{budget:.1f}.log"
    t0 = time.time()
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        model, state = mtq.auto_quantize(model, **kw)
    search_s = time.time() - t0
    text = buf.getvalue()
    log.write_text(text)
    best = state["best"]
    assign = {}
    for name, rec in best["recipe"].items():
        mod = name.replace(".quant_recipe", "")
        assign[mod] = recipe_name(rec)
    # expand grouped hparams to their member linears via the model's quantizer states
    full = {}
    for n, mod in model.named_modules():
        if n in linear_sizes():
            wq = getattr(mod, "weight_quantizer", None)
            if wq is None or not wq.is_enabled:
                full[n] = "bf16"
            elif getattr(wq, "block_sizes", None):
                full[n] = "nvfp4"
            else:
                full[n] = "fp8"
    for n, f in assign.items():  # the search state (one entry per linear) must agree with the quantizers
        if n in full and full[n] != f:
            raise AssertionError(f"{n}: search state {f}, quantizers {full[n]}")
    t1 = time.time()
    p, npred = ppl(model)
    eval_s = time.time() - t1
    own = float(best["constraints"]["effective_bits"])
    return {"tool": f"ModelOpt ({variant})", "budget": budget, "own_bits": own, "common_bits": common_bits(full),
            "ppl": p, "n_pred": npred, "search_s": search_s, "eval_s": eval_s, "assign": full,
            "summary": summary(full), "is_satisfied": best.get("is_satisfied"), "log": str(log),
            "score": float(best.get("score", float("nan")))}


# ------------------------------------------------------------------------------------------------


def versions(mixq: str) -> dict:
    import modelopt
    import torch
    import transformers

    mv = subprocess.run([mixq, "--version"], capture_output=True, text=True).stdout.strip()
    git = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    try:
        import pulp
        pv = pulp.__version__
    except Exception:  # noqa: BLE001
        pv = "?"
    return {"mixq": f"{mv} ({mixq}; repo HEAD {git})", "nvidia-modelopt": modelopt.__version__,
            "torch": torch.__version__, "transformers": transformers.__version__, "pulp": pv,
            "python": platform.python_version(), "cpu": f"{os.cpu_count()} cores ({platform.machine()})",
            "torch threads": str(torch.get_num_threads())}


def table(rows: list[dict]) -> str:
    out = ["| tool | budget | eff. bits (own) | eff. bits (common) | held-out ppl | search time | assignment (L0 … L4: qkv o gate_up down) |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        t = f"{r['search_s']:.1f} s"
        out.append(f"| {r['tool']} | {r['budget']:.1f} | {r['own_bits']:.3f} | {r['common_bits']:.3f} | {r['ppl']:.4f} | "
                   f"{t} | `{r['summary']}` |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mixq", default="/tmp/mixq-mo")
    ap.add_argument("--budgets", type=float, nargs="+", default=[5.4, 6.0])
    ap.add_argument("--variants", nargs="+", default=["matched", "default"])
    ap.add_argument("--work", default="/tmp/autoquant_vs_modelopt")
    ap.add_argument("--md", default=None, help="write the Markdown report here")
    ap.add_argument("--json", default=None, help="write the raw results here")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    import torch
    install_cpu_nvfp4()
    kcheck = check_kernel()
    print("kernel check:", kcheck, flush=True)

    base = load_hf(tied_head=True)
    ppl_pt, npred = ppl(base)
    del base
    print(f"PyTorch unquantized ppl: {ppl_pt:.6f} over {npred} predicted tokens", flush=True)

    rows = []
    for b in args.budgets:
        r = run_mixq(args.mixq, b, work)
        print(f"mixq {b}: bits {r['own_bits']:.3f} ppl {r['ppl']:.4f} {r['summary']}", flush=True)
        rows.append(r)
        for v in args.variants:
            r = run_modelopt(b, v, work)
            print(f"ModelOpt {v} {b}: bits {r['own_bits']:.3f}/{r['common_bits']:.3f} ppl {r['ppl']:.4f} "
                  f"{r['summary']} ({r['search_s']:.1f}s)", flush=True)
            rows.append(r)
    rows.sort(key=lambda r: (r["budget"], r["tool"] != "mixq", r["tool"]))
    tab = table(rows)
    print()
    print(tab)
    mixq_src = next(r["ppl_source"] for r in rows if r["tool"] == "mixq")
    info = {"kernel_check": kcheck, "ppl_unquantized_pytorch": ppl_pt, "ppl_unquantized_mixq": mixq_src,
            "n_pred": npred, "versions": versions(args.mixq), "rows": rows}
    print(f"\nunquantized ppl: mixq {mixq_src:.6f}, PyTorch {ppl_pt:.6f}")
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=1, default=str))
    if args.md:
        Path(args.md).write_text(render_md(info, tab))


def render_md(info: dict, tab: str) -> str:
    return "RENDER\n" + tab  # replaced by the hand-written report (see the .md)


if __name__ == "__main__":
    main()
