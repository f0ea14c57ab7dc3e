#!/usr/bin/env python3
"""Generate golden test vectors for NVFP4 / FP8 weight quantization.

Writes tests/golden/data/format_goldens.json.

Two independent producers are run on the same deterministic inputs:

* NVIDIA Model Optimizer (``nvidia-modelopt``), CPU only: ``mtq.quantize`` on a one-layer
  ``nn.Sequential(nn.Linear)`` with the weight quantizer of the preset config enabled and the
  input quantizer disabled, followed by the HF-export helpers
  ``modelopt.torch.export.quant_utils.{get_quantization_format, get_weight_scaling_factor,
  get_weight_scaling_factor_2, to_quantized_weight}`` (which call ``NVFP4QTensor`` /
  plain ``torch.float8_e4m3fn`` casts).  ModelOpt's static-NVFP4 fake-quant used during MSE
  calibration is a Triton kernel that ModelOpt only enables on CUDA; here it is executed
  unchanged by Triton's CPU interpreter (``TRITON_INTERPRET=1``) -- see
  ``_install_modelopt_cpu_shims``.
* A plain NumPy reference of the mixq spec (shared/reference/autoquantize-numerics.md
  sections 2-4, export semantics), written without torch.

Every float is stored as the hex of its little-endian IEEE bytes, so values are bit exact.

Usage:
    .venv/bin/python tests/golden/make_format_goldens.py            # regenerate (needs modelopt)
    python3 tests/golden/make_format_goldens.py --verify-numpy       # numpy only: re-check the JSON

Environment used for the committed JSON is recorded in its "generator" field.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

# Must be set before triton decorates ModelOpt's kernels (import time).
os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np

HERE = Path(__file__).resolve().parent
OUT_PATH = HERE / "data" / "format_goldens.json"

F32 = np.float32
BLOCK = 16
E4M3_MAX = 448.0

# ---------------------------------------------------------------------------------------------
# Bit-exact helpers
# ---------------------------------------------------------------------------------------------


def f32_hex(a) -> str:
    return np.ascontiguousarray(np.asarray(a, dtype="<f4")).tobytes().hex()


def u8_hex(a) -> str:
    return np.ascontiguousarray(np.asarray(a, dtype=np.uint8)).tobytes().hex()


def hex_f32(s: str) -> np.ndarray:
    return np.frombuffer(bytes.fromhex(s), dtype="<f4").copy()


def hex_u8(s: str) -> np.ndarray:
    return np.frombuffer(bytes.fromhex(s), dtype=np.uint8).copy()


def _e4m3_decode_table() -> np.ndarray:
    """float64 value of every E4M3FN byte 0..255 (NaN for 0x7F/0xFF)."""
    vals = np.empty(256, dtype=np.float64)
    for b in range(256):
        s = -1.0 if b & 0x80 else 1.0
        e = (b >> 3) & 0xF
        m = b & 0x7
        if e == 0xF and m == 0x7:
            vals[b] = np.nan
        elif e == 0:
            vals[b] = s * m * 2.0**-9
        else:
            vals[b] = s * (1.0 + m / 8.0) * 2.0 ** (e - 7)
    return vals


E4M3_VALUES = _e4m3_decode_table()
E4M3_POS = E4M3_VALUES[:127]  # codes 0..126, increasing, 0x7E = 448
E2M1_MAG = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=np.float32)
# nibble -> value, as ModelOpt's NVFP4QTensor.dequantize table (0x8 decodes to +0.0)
E2M1_NIBBLE = np.array(
    [0, 0.5, 1, 1.5, 2, 3, 4, 6, 0, -0.5, -1, -1.5, -2, -3, -4, -6], dtype=np.float32
)


def e4m3_encode_satfinite(x) -> np.ndarray:
    """float32 -> E4M3FN byte: clamp to +-448, round to nearest, ties to even code. No NaN input."""
    x = np.asarray(x, dtype=np.float32).astype(np.float64)
    sign = (np.signbit(x)).astype(np.uint8) << 7
    a = np.minimum(np.abs(x), E4M3_MAX)
    hi = np.searchsorted(E4M3_POS, a, side="left")  # first code with value >= a
    hi = np.minimum(hi, 126)
    lo = np.maximum(hi - 1, 0)
    dlo = a - E4M3_POS[lo]
    dhi = E4M3_POS[hi] - a
    pick_hi = (dhi < dlo) | ((dhi == dlo) & (hi % 2 == 0))
    code = np.where(pick_hi, hi, lo).astype(np.uint8)
    code = np.where(a == E4M3_POS[hi], hi, code).astype(np.uint8)
    return code | sign


def e4m3_value_f32(code) -> np.ndarray:
    return E4M3_VALUES[np.asarray(code, dtype=np.uint8)].astype(np.float32)


def e2m1_mag_code(a) -> np.ndarray:
    """|x|/scale (float32) -> magnitude code 0..7, RNE, saturating (spec section 7)."""
    a = np.asarray(a, dtype=np.float32)
    c = np.full(a.shape, 7, dtype=np.uint8)
    c = np.where(a <= 5.0, 6, c)
    c = np.where(a < 3.5, 5, c)
    c = np.where(a <= 2.5, 4, c)
    c = np.where(a < 1.75, 3, c)
    c = np.where(a <= 1.25, 2, c)
    c = np.where(a < 0.75, 1, c)
    c = np.where(a <= 0.25, 0, c)
    return c.astype(np.uint8)


def to_bf16_exact(x: np.ndarray) -> np.ndarray:
    """Round float32 to the nearest bf16 (RNE) and return it as float32."""
    u = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32)


def torch_cpu_linspace_f32(start: float, stop: float, steps: int) -> np.ndarray:
    """Reproduces torch.linspace(float32) on CPU bit-exactly (checked against torch 2.x):
    step = f32(f32(stop) - f32(start)) / f32(steps-1); i < steps//2: fma(step, i, start);
    else fma(-step, steps-1-i, stop)  (single rounding each; exact via float64 here)."""
    s, e = F32(start), F32(stop)
    step = F32(F32(e - s) / F32(steps - 1))
    out = []
    for i in range(steps):
        if i < steps // 2:
            out.append(F32(np.float64(step) * i + np.float64(s)))
        else:
            out.append(F32(np.float64(e) - np.float64(step) * (steps - 1 - i)))
    return np.array(out, dtype=np.float32)


MSE_NUM_STEPS = math.ceil((4.0 - 0.25) / 0.1) + 1  # ModelOpt MseCalibrator: 39
MSE_MULTIPLIERS = torch_cpu_linspace_f32(0.25, 4.0, MSE_NUM_STEPS)
FOUR_OVER_SIX_MULTIPLIERS = torch_cpu_linspace_f32(1.0, 1.5, math.ceil((1.5 - 1.0) / 0.5) + 1)

# ---------------------------------------------------------------------------------------------
# NumPy reference of the spec (export semantics)
# ---------------------------------------------------------------------------------------------


def np_blocks(w: np.ndarray) -> np.ndarray:
    rows, cols = w.shape
    return w.reshape(rows, cols // BLOCK, BLOCK)


def np_nvfp4_encode(w: np.ndarray, sf_codes: np.ndarray, ws2: np.float32):
    """Quantize with given per-block E4M3 scale codes [rows, nb] and fp32 weight_scale_2."""
    wb = np_blocks(w)
    scale = (e4m3_value_f32(sf_codes) * ws2).astype(np.float32)  # f32(sf * ws2)
    scaled = (wb / scale[..., None]).astype(np.float32)  # f32 division, not reciprocal mult
    mag = e2m1_mag_code(np.abs(scaled))
    nib = mag | ((wb < 0).astype(np.uint8) << 3)  # sign from w < 0 (-0.0 -> +)
    nib = nib.reshape(w.shape)
    packed = (nib[:, 0::2] | (nib[:, 1::2] << 4)).astype(np.uint8)
    deq = (E2M1_NIBBLE[nib].reshape(wb.shape) * scale[..., None]).astype(np.float32)
    return packed, deq.reshape(w.shape), nib


def np_block_sq_err(w: np.ndarray, deq: np.ndarray) -> np.ndarray:
    d = np_blocks(w).astype(np.float64) - np_blocks(deq).astype(np.float64)
    return (d * d).sum(-1)


def np_scale_codes_from_amax(amax_b: np.ndarray, G: np.float32, m: float) -> np.ndarray:
    """s = a_b*m/G (float32: (a_b*m)/G), a_b == 0 -> 1, clamp [2^-9, 448], E4M3 RNE."""
    s = ((amax_b * F32(m)).astype(np.float32) / G).astype(np.float32)
    s = np.where(amax_b == 0, F32(1.0), s)
    s = np.clip(s, F32(2.0**-9), F32(448.0)).astype(np.float32)
    return e4m3_encode_satfinite(s)


def np_nvfp4(w: np.ndarray, method: str) -> dict:
    m = 256.0 if method == "nvfp4_four_over_six" else 448.0
    G = F32(np.abs(w).max())
    ws2 = F32(G / F32(6.0 * m))
    amax_b = np.abs(np_blocks(w)).max(-1).astype(np.float32)
    choice = np.zeros(amax_b.shape, dtype=np.int64)
    if method == "nvfp4_max":
        codes = np_scale_codes_from_amax(amax_b, G, m)
    elif method in ("nvfp4_four_over_six", "nvfp4_mse_multiplier"):
        mults = FOUR_OVER_SIX_MULTIPLIERS if method == "nvfp4_four_over_six" else MSE_MULTIPLIERS
        best_err = None
        codes = None
        for i, c in enumerate(mults):
            cc = np_scale_codes_from_amax((amax_b * c).astype(np.float32), G, m)
            _, deq, _ = np_nvfp4_encode(w, cc, ws2)
            err = np_block_sq_err(w, deq)
            if best_err is None:
                best_err, codes = err, cc
            else:
                better = err < best_err  # strict: first candidate wins ties
                best_err = np.where(better, err, best_err)
                codes = np.where(better, cc, codes)
                choice = np.where(better, i, choice)
    elif method == "nvfp4_mse_fp8_sweep":
        best_err = None
        codes = None
        for k in range(1, 127):
            cc = np.full(amax_b.shape, k, dtype=np.uint8)
            _, deq, _ = np_nvfp4_encode(w, cc, ws2)
            err = np_block_sq_err(w, deq)
            if best_err is None:
                best_err, codes = err, cc
                choice[:] = k
            else:
                better = err < best_err
                best_err = np.where(better, err, best_err)
                codes = np.where(better, cc, codes)
                choice = np.where(better, k, choice)
    else:
        raise ValueError(method)
    codes = codes.astype(np.uint8)
    packed, deq, _ = np_nvfp4_encode(w, codes, ws2)
    return {"ws2": ws2, "sf": codes, "packed": packed, "deq": deq, "choice": choice}


def np_fp8(w: np.ndarray, per_channel: bool) -> dict:
    if per_channel:
        amax = np.abs(w).max(axis=1).astype(np.float32)
    else:
        amax = np.array([np.abs(w).max()], dtype=np.float32)
    amax = np.where(amax == 0, F32(448.0), amax).astype(np.float32)  # spec silent; = ModelOpt
    scale = (amax / F32(448.0)).astype(np.float32)
    sc = scale[:, None] if per_channel else scale[0]
    codes = e4m3_encode_satfinite((w / sc).astype(np.float32))
    deq = (e4m3_value_f32(codes) * sc).astype(np.float32)
    return {"scale": scale, "codes": codes, "deq": deq}


# ---------------------------------------------------------------------------------------------
# Emulation of ModelOpt's *calibration* fake quant (only used to explain disagreements)
# ---------------------------------------------------------------------------------------------


def mo_fakequant_block_scale(amax_c: np.ndarray, G: np.float32, m: float) -> np.ndarray:
    """compute_fp4_scales + _fp8_eager (CPU), float32 op order as in ModelOpt 0.47."""
    scale = (amax_c / F32(6.0)).astype(np.float32)
    sfq = F32(F32(G * F32(448.0 / m)) / F32(6.0))
    sc = F32(F32(448.0) / sfq)
    inv = F32(F32(1.0) / sc)
    y = np.clip((scale * sc).astype(np.float32), -448.0, 448.0).astype(np.float32)
    return (e4m3_value_f32(e4m3_encode_satfinite(y)) * inv).astype(np.float32)


def mo_fakequant_err(w: np.ndarray, fq_scale: np.ndarray) -> np.ndarray:
    wb = np_blocks(w)
    safe = np.where(fq_scale == 0, F32(1.0), fq_scale).astype(np.float32)[..., None]
    q = E2M1_MAG[e2m1_mag_code((np.abs(wb) / safe).astype(np.float32))]
    xq = (q * safe).astype(np.float32)
    xq = np.where(wb >= 0, xq, -xq)
    xq = np.where(fq_scale[..., None] == 0, F32(0.0), xq)
    d = wb.astype(np.float64) - xq.astype(np.float64)
    return (d * d).sum(-1)


# ---------------------------------------------------------------------------------------------
# ModelOpt (CPU)
# ---------------------------------------------------------------------------------------------

MO_CONFIG = {
    # method -> (preset name, algorithm override)
    "nvfp4_max": ("NVFP4_DEFAULT_CFG", None),  # dynamic NVFP4 weights, max calibration
    "nvfp4_four_over_six": ("NVFP4_FOUR_OVER_SIX_CFG", None),  # static, mse {1.0,1.5}, m=256
    "nvfp4_mse_multiplier": (
        "NVFP4_W4A4_WEIGHT_MSE_FP8_SWEEP_CFG",
        {"method": "mse", "fp8_scale_sweep": False},  # MseCalibConfig defaults 0.25/4.0/0.1
    ),
    "nvfp4_mse_fp8_sweep": ("NVFP4_W4A4_WEIGHT_MSE_FP8_SWEEP_CFG", None),  # static, sweep
    "fp8_per_tensor": ("FP8_DEFAULT_CFG", None),
    "fp8_per_channel": ("FP8_PER_CHANNEL_PER_TOKEN_CFG", None),
}


def _make_jit_isnan():
    # The Triton interpreter requires `tl` in the jit function's module globals.
    global tl, triton
    import triton
    import triton.language as tl

    @triton.jit
    def _isnan(x):
        return x != x

    return _isnan


class ModelOpt:
    def __init__(self):
        import torch
        import triton
        import triton.language as tl  # noqa: F401  (must be visible to the jit helper below)

        import modelopt
        import modelopt.torch.quantization as mtq
        from modelopt.torch.export import quant_utils
        from modelopt.torch.quantization.qtensor.nvfp4_tensor import NVFP4QTensor

        self.torch, self.mtq, self.qu, self.NVFP4QTensor = torch, mtq, quant_utils, NVFP4QTensor
        self.versions = {
            "modelopt": modelopt.__version__,
            "torch": torch.__version__,
            "triton": triton.__version__,
        }
        self.shim_note = self._install_modelopt_cpu_shims()

    def _install_modelopt_cpu_shims(self) -> str:
        """Let ModelOpt's static-NVFP4 fake quant (a Triton kernel) run on CPU.

        ModelOpt enables its Triton kernels only when CUDA is available
        (modelopt/torch/kernels/quantization/gemm/__init__.py). The kernel code itself
        (fp4_kernel.static_blockwise_fp4_fake_quant -> common/nvfp4_quant.nvfp4_scalar_quant
        -> fp4_round_magnitude) is run unchanged under TRITON_INTERPRET=1 with three shims:
        (1) gemm.IS_AVAILABLE/static_blockwise_fp4_fake_quant are set, (2) torch.cuda.device()
        accepts a CPU device as a no-op, (3) libdevice.isnan (CUDA-only extern, used only to
        guard NaN block scales) is replaced by a jit'd `x != x`."""
        import types

        import torch
        import triton
        import triton.language as tl  # noqa: F401

        assert os.environ.get("TRITON_INTERPRET") == "1"
        import modelopt.torch.kernels.quantization.common.nvfp4_quant as nq
        import modelopt.torch.kernels.quantization.gemm as gemm
        from modelopt.torch.kernels.quantization.gemm import fp4_kernel

        nq.libdevice = types.SimpleNamespace(isnan=_make_jit_isnan())
        gemm.IS_AVAILABLE = True
        gemm.static_blockwise_fp4_fake_quant = fp4_kernel.static_blockwise_fp4_fake_quant
        orig_device = torch.cuda.device

        class _Device:
            def __init__(self, d):
                cpu = isinstance(d, torch.device) and d.type == "cpu"
                self.inner = None if cpu else orig_device(d)

            def __enter__(self):
                return None if self.inner is None else self.inner.__enter__()

            def __exit__(self, *a):
                return None if self.inner is None else self.inner.__exit__(*a)

        torch.cuda.device = _Device
        return (
            "ModelOpt calibration fake-quant (Triton kernel static_blockwise_fp4_fake_quant) "
            "executed on CPU via TRITON_INTERPRET=1 (ModelOpt gates it on CUDA)"
        )

    def run(self, w: np.ndarray, method: str, dtype_name: str = "float32") -> dict:
        import copy

        torch, mtq, qu = self.torch, self.mtq, self.qu
        dtype = getattr(torch, dtype_name)
        preset, algo = MO_CONFIG[method]
        cfg = copy.deepcopy(getattr(mtq, preset))
        cfg["quant_cfg"].append({"quantizer_name": "*input_quantizer", "enable": False})
        if algo is not None:
            cfg["algorithm"] = algo
        rows, cols = w.shape
        model = torch.nn.Sequential(torch.nn.Linear(cols, rows, bias=False, dtype=dtype))
        with torch.no_grad():
            model[0].weight.copy_(torch.from_numpy(w.copy()).to(dtype))
        mtq.quantize(model, cfg, forward_loop=None)
        mod = model[0]
        wq = mod.weight_quantizer
        fmt = qu.get_quantization_format(mod)
        weight = mod.weight.data
        wsf = qu.get_weight_scaling_factor(mod)
        out = {"format": fmt, "quantizer": type(wq).__name__}
        if method.startswith("nvfp4"):
            wsf2 = qu.get_weight_scaling_factor_2(mod)
            packed = qu.to_quantized_weight(weight, wsf, fmt, wsf2, BLOCK)
            qt = self.NVFP4QTensor(weight.shape, torch.float32, packed)
            deq = qt.dequantize(
                dtype=torch.float32, scale=wsf, double_scale=wsf2, block_sizes={-1: BLOCK}
            )
            out.update(
                ws2=F32(wsf2.float().item()),
                sf=wsf.view(torch.uint8).numpy().reshape(rows, cols // BLOCK).copy(),
                packed=packed.numpy().copy(),
                deq=deq.numpy().astype(np.float32).copy(),
                amax=wq._amax.float().numpy().reshape(-1).copy(),
                global_amax=(
                    None
                    if getattr(wq, "global_amax", None) is None
                    else F32(wq.global_amax.float().item())
                ),
                amax_dtype=str(wq._amax.dtype),
            )
        else:
            codes = qu.to_quantized_weight(weight, wsf, fmt)
            scale = wsf.float().reshape(-1).numpy().astype(np.float32).copy()
            sc = torch.from_numpy(scale[:, None] if method == "fp8_per_channel" else scale)
            deq = codes.to(torch.float32) * sc
            out.update(
                scale=scale,
                codes=codes.view(torch.uint8).numpy().copy(),
                deq=deq.numpy().astype(np.float32).copy(),
            )
        return out


# ---------------------------------------------------------------------------------------------
# Test tensors
# ---------------------------------------------------------------------------------------------


def make_cases() -> list[dict]:
    cases = []

    rng = np.random.default_rng(1001)
    cases.append({"name": "normal", "w": (rng.standard_normal((8, 128)) * 0.02).astype(F32)})

    rng = np.random.default_rng(1002)
    cases.append(
        {"name": "heavy_tailed", "w": (rng.standard_t(3, (8, 128)) * 0.02).astype(F32)}
    )

    rng = np.random.default_rng(1003)
    w = rng.standard_normal((8, 128)) * 0.02
    w[:, [3, 77, 100]] *= 50.0
    cases.append({"name": "outliers", "w": w.astype(F32)})

    rng = np.random.default_rng(1004)
    w = (rng.standard_normal((8, 128)) * 0.02).astype(F32)
    for r, b in [(0, 0), (1, 3), (2, 7), (5, 2), (7, 7)]:
        w[r, b * BLOCK : (b + 1) * BLOCK] = 0.0
    w[3, 4 * BLOCK : 5 * BLOCK] = -0.0  # all negative zeros
    w[6, :] = 0.0  # whole zero row (fp8 per-channel amax 0)
    cases.append({"name": "zero_blocks", "w": w})

    rng = np.random.default_rng(1005)
    w = rng.standard_normal((8, 128)).astype(F32)
    G = np.abs(w).max()
    ratios = {
        (0, 1): 1e-6, (1, 2): 1e-9, (2, 3): 1e-6, (3, 4): 1e-9, (4, 5): 1e-5,
        (5, 6): 4e-6, (6, 0): 2.5e-4, (7, 7): 1e-7, (1, 5): 3e-5, (2, 0): 2e-6,
    }  # fmt: skip
    for (r, b), ratio in ratios.items():
        blk = w[r, b * BLOCK : (b + 1) * BLOCK].astype(np.float64)
        w[r, b * BLOCK : (b + 1) * BLOCK] = (blk * (ratio * G / np.abs(blk).max())).astype(F32)
    cases.append({"name": "tiny_blocks", "w": w.astype(F32)})

    cases.append({"name": "ties", "w": make_ties()})
    cases.append({"name": "scale_rounding_edge", "w": make_scale_rounding_edge()})

    rng = np.random.default_rng(1007)
    w = to_bf16_exact((rng.standard_normal((8, 128)) * 0.02).astype(F32))
    cases.append({"name": "bf16_weights", "w": w, "torch_dtype": "bfloat16"})
    return cases


def make_scale_rounding_edge() -> np.ndarray:
    """8x128 whose block maxima sit within 2 float32 ulps of a_b = mid*G/448 with `mid` an
    E4M3 rounding midpoint. There the float32 op order of the block-scale formula decides the
    E4M3 code: spec f32(f32(a*m)/G), ModelOpt dynamic export f32(a/f32(6*ws2)) and ModelOpt
    static export f32(f32(f32(a/6)*m)/f32(G/6)) disagree for many of these blocks."""
    rng = np.random.default_rng(1008)
    G = F32(0.4465328454971313)
    m = F32(448.0)
    ws2 = F32(G / F32(6.0 * 448.0))
    mids = (E4M3_POS[1:] + E4M3_POS[:-1]) / 2
    a0 = (mids[mids > 2.0**-9] * np.float64(G) / 448.0).astype(F32)
    cand = [a0]
    for d in (np.inf, -np.inf):
        x = a0
        for _ in range(2):
            x = np.nextafter(x, F32(d)).astype(F32)
            cand.append(x)
    A = np.unique(np.concatenate(cand))
    A = A[(A > 0) & (A < G)]
    spec = e4m3_encode_satfinite(np.clip((A * m).astype(F32) / G, 2.0**-9, 448.0).astype(F32))
    dyn = e4m3_encode_satfinite(
        np.clip(A / F32(F32(6.0) * ws2), 2.0**-9, 448.0).astype(F32)
    )
    sta = e4m3_encode_satfinite(
        np.clip(
            ((A / F32(6.0)).astype(F32) * m).astype(F32) / F32(G / F32(6.0)), 2.0**-9, 448.0
        ).astype(F32)
    )
    d_dyn = A[spec != dyn]
    d_sta = A[(spec != sta) & (spec == dyn)]
    pick = np.concatenate(
        [d_dyn[np.linspace(0, len(d_dyn) - 1, 40).astype(int)],
         d_sta[np.linspace(0, len(d_sta) - 1, 23).astype(int)]]
    )  # fmt: skip
    w = np.empty((8, 128), dtype=F32)
    blocks = [G] + list(pick)
    for i, a in enumerate(blocks):
        r, b = divmod(i, 8)
        v = (rng.uniform(-0.95, 0.95, BLOCK) * np.float64(a)).astype(F32)
        v[rng.integers(0, BLOCK)] = a if rng.random() < 0.5 else -a
        w[r, b * BLOCK : (b + 1) * BLOCK] = v
    assert np.abs(w).max() == G
    return w


def make_ties() -> np.ndarray:
    """4x64. weight_scale_2 = G/2688 = 2^-12 exactly; under nvfp4_max every block of rows 0-2
    has an exact E4M3 scale sf_b and elements t*sf_b*2^-12 with t on every E2M1 tie
    (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5), both signs. Row 3 holds FP8 E4M3 midpoints for
    fp8_per_tensor (scale = G/448 = 1.5*2^-10 exactly)."""
    ws2 = 2.0**-12
    G = 2688.0 * ws2  # = 0.65625
    ties = [0.25, -0.75, 1.25, -1.75, 2.5, -3.5, 5.0, -0.25, 0.75, -1.25, 1.75, -2.5, 3.5, -5.0]
    sfs = [448.0, 1.0, 0.875, 2.0**-9, 3 * 2.0**-9, 2.0**-6, 96.0, 13.0, 0.5, 240.0, 7 * 2.0**-9, 36.0]
    extra = [0.0, -0.0, -0.1875, 0.3125, 5.5, -5.25, 0.125, 4.5, -2.75, 1.125, -0.625, 3.0]
    w = np.zeros((4, 64), dtype=np.float64)
    for i, sf in enumerate(sfs):
        r, b = divmod(i, 4)
        S = sf * ws2
        vals = [6.0 * S] + [t * S for t in ties] + [extra[i] * S]
        w[r, b * BLOCK : (b + 1) * BLOCK] = vals
    fp8_scale = G / 448.0  # 1.5 * 2^-10
    mids = [
        2.0**-10, 3 * 2.0**-10, 5 * 2.0**-10, 15 * 2.0**-10,  # subnormal ties
        17 * 2.0**-10, 1.0625, 1.1875, 17.0, 19.0, 432.0, 240.0 + 8.0, 0.5 + 1 / 32,
        -1.0625, -19.0, -3 * 2.0**-10, 448.0,
        2.0**-11, 1.03125, 288.0 + 16.0, 3.0 + 0.125, -(2.0**-10), 6.5, 13.0, 27.0,
        0.015625 + 2.0**-10, 0.0, -0.0, 400.0, 104.0, 1.0, -7.5, 0.9375 + 0.03125,
    ]  # fmt: skip
    for j, mval in enumerate(mids):
        w[3, j] = mval * fp8_scale
    # fill the rest of row 3 with exact FP8 multiples so they stay representable
    for j in range(len(mids), 64):
        w[3, j] = ((j % 13) - 6) * 2.0 * fp8_scale
    out = w.astype(F32)
    assert np.array_equal(out.astype(np.float64), w), "ties inputs must be exact in float32"
    assert np.abs(out).max() == F32(G)
    return out


def make_reject_cases() -> list[dict]:
    def mk(name, bad: dict[int, int], shape=(2, 32), zeros=()):
        rng = np.random.default_rng(2000 + len(name))
        w = (rng.standard_normal(shape) * 0.02).astype(F32).reshape(-1)
        w[list(zeros)] = 0.0
        u = w.view(np.uint32)
        for idx, bits in bad.items():
            u[idx] = bits
        return {
            "name": name,
            "shape": list(shape),
            "input_f32_hex": f32_hex(w.reshape(shape)),
            "first_bad_index": min(bad),
        }

    QNAN, NQNAN, SNAN, PINF, NINF = 0x7FC00000, 0xFFC00000, 0x7F800001, 0x7F800000, 0xFF800000
    return [
        mk("nan_at_5", {5: QNAN}),
        mk("neg_nan_at_31", {31: NQNAN}),
        mk("snan_at_0", {0: SNAN}),
        mk("posinf_at_17", {17: PINF}),
        mk("neginf_at_63", {63: NINF}),
        mk("inf_then_nan", {10: PINF, 40: QNAN}),
        mk("nan_in_otherwise_zero_block", {36: QNAN}, zeros=range(32, 48)),
    ]


# ---------------------------------------------------------------------------------------------
# Comparison / notes
# ---------------------------------------------------------------------------------------------


def _mults_for(method):
    return FOUR_OVER_SIX_MULTIPLIERS if method == "nvfp4_four_over_six" else MSE_MULTIPLIERS


def mo_choice(method: str, w: np.ndarray, mo: dict) -> np.ndarray:
    """Recover ModelOpt's per-block candidate index from its calibrated per-block _amax."""
    nbr = w.shape[1] // BLOCK
    amax_b = np.abs(np_blocks(w)).max(-1).astype(np.float32).reshape(-1)
    got = mo["amax"].astype(np.float32)
    ch = np.full(amax_b.shape, -1, dtype=np.int64)
    if method == "nvfp4_max":
        return np.zeros((w.shape[0], nbr), dtype=np.int64)
    if method == "nvfp4_mse_fp8_sweep":
        G = mo["global_amax"]
        for k in range(126, 0, -1):
            c = F32(F32(E4M3_POS[k]) / F32(448.0))
            ch = np.where(got == F32(G * c), k, ch)
    else:
        for i in range(len(_mults_for(method)) - 1, -1, -1):
            ch = np.where(got == (amax_b * _mults_for(method)[i]).astype(np.float32), i, ch)
        ch = np.where(amax_b == 0, 0, ch)
    return ch.reshape(w.shape[0], nbr)


def explain_nvfp4(case: str, method: str, w: np.ndarray, mo: dict, ref: dict) -> list[str]:
    notes = []
    m = 256.0 if method == "nvfp4_four_over_six" else 448.0
    G = F32(np.abs(w).max())
    nb = w.shape[1] // BLOCK
    amax_b = np.abs(np_blocks(w)).max(-1).astype(np.float32)
    if mo["ws2"] != ref["ws2"]:
        notes.append(f"weight_scale_2 differs: modelopt {mo['ws2']!r} numpy {ref['ws2']!r}")
    mo_ch = mo_choice(method, w, mo)
    # any block whose scale byte, codes or dequant differ
    pk_m = mo["packed"].reshape(w.shape[0], nb, BLOCK // 2)
    pk_r = ref["packed"].reshape(w.shape[0], nb, BLOCK // 2)
    dq_m = np_blocks(mo["deq"]).view(np.uint32)
    dq_r = np_blocks(ref["deq"]).view(np.uint32)
    bad = (mo["sf"] != ref["sf"]) | (pk_m != pk_r).any(-1) | (dq_m != dq_r).any(-1)
    zero = bad & (amax_b == 0)
    if zero.any():
        zb = [(int(r), int(b)) for r, b in np.argwhere(zero)]
        sfz = sorted({int(mo["sf"][r, b]) for r, b in zb})
        notes.append(
            f"all-zero blocks (row, blk) {zb}: only weight_scale differs, modelopt "
            + "/".join(f"0x{v:02x}" for v in sfz)
            + " vs spec 0x38 (=1.0); codes and dequant identical (all 0). Cause: ModelOpt's "
            "static export (NVFP4QTensor.get_weights_scaling_factor_from_quantizer) replaces "
            "per_block_scale = amax/6 == 0 by 1.0 BEFORE rescaling by m/(G/6), i.e. "
            "s = e4m3(clamp(f32(f32(1.0*m)/f32(G/6)), 2^-9, 448)) instead of the spec's s = 1 "
            "(the dynamic nvfp4_max export and the fp8 sweep, whose zero blocks pick code 1, "
            "do not have this)"
        )
    diff_blocks = np.argwhere(bad & ~zero)
    if method == "nvfp4_max" and len(diff_blocks):
        G6 = F32(F32(6.0) * mo["ws2"])
        items = []
        for r, b in diff_blocks:
            a = amax_b[r, b]
            items.append(
                f"({int(r)},{int(b)}) a={float(a):.9g} s_spec={float(F32(F32(a * F32(m)) / G)):.9g}"
                f"->0x{ref['sf'][r, b]:02x} s_modelopt={float(F32(a / G6)):.9g}"
                f"->0x{mo['sf'][r, b]:02x}"
            )
        notes.append(
            f"{len(items)} blocks get a different E4M3 weight_scale (and hence codes/dequant): "
            "ModelOpt's dynamic export (NVFP4QTensor.get_weights_scaling_factor) computes "
            "s = f32(a_b / f32(6 * ws2)) with ws2 = f32(G/2688), the spec s = f32(f32(a_b*448)/G); "
            "the two float32 results differ by an ulp and a_b*448/G lies on (or within an ulp of) "
            "an E4M3 rounding midpoint, so RNE goes opposite ways. Blocks (row,blk): "
            + "; ".join(items)
        )
        return notes
    for r, b in diff_blocks:
        a = amax_b[r, b]
        desc = (
            f"block (row {r}, blk {b}) amax={float(a):.6g} (amax/G={float(a / G):.3g}): "
            f"weight_scale modelopt 0x{mo['sf'][r, b]:02x} ({E4M3_POS[mo['sf'][r, b] & 0x7F]:g})"
            f" vs numpy 0x{ref['sf'][r, b]:02x} ({E4M3_POS[ref['sf'][r, b] & 0x7F]:g})"
        )
        if method != "nvfp4_max":
            desc += f"; candidate index modelopt {mo_ch[r, b]} vs numpy {ref['choice'][r, b]}"
        if method != "nvfp4_max":
            # Does ModelOpt's calibration fake quant (no lower clamp, own float32 op order)
            # reproduce ModelOpt's choice?
            if method == "nvfp4_mse_fp8_sweep":
                cands = [F32(G * F32(F32(E4M3_POS[k]) / F32(448.0))) for k in range(1, 127)]
                idx_of = {k: k - 1 for k in range(1, 127)}
            else:
                cands = [F32(a * c) for c in _mults_for(method)]
                idx_of = {i: i for i in range(len(cands))}
            wb = w[r : r + 1, b * BLOCK : (b + 1) * BLOCK]
            fq = np.array(
                [mo_fakequant_block_scale(np.array([[c]], F32), G, m)[0, 0] for c in cands]
            )
            errs = np.array([mo_fakequant_err(wb, np.array([[s]], F32))[0, 0] for s in fq])
            emu = int(np.argmin(errs))
            mo_i = idx_of.get(int(mo_ch[r, b]), -1)
            ref_i = idx_of.get(int(ref["choice"][r, b]), -1)
            flushed = int((fq == 0).sum())
            if flushed:
                desc += (
                    f"; ModelOpt's calibration fake quant (compute_fp4_scales/_fp8_eager: "
                    f"e4m3 cast with no 2^-9 lower clamp) flushes the block scale to 0 for "
                    f"{flushed}/{len(cands)} candidates (block error = sum w^2 there), while "
                    f"export clamps s to >= 2^-9"
                )
            if mo_i >= 0 and ref_i >= 0:
                desc += (
                    f"; fake-quant errors: modelopt pick {errs[mo_i]:.9g} vs numpy pick "
                    f"{errs[ref_i]:.9g}; emulated-modelopt argmin index {emu}"
                )
                if not flushed and abs(errs[mo_i] - errs[ref_i]) <= 1e-6 * max(errs[mo_i], 1e-300):
                    desc += " (near-tie decided by float32 rounding differences)"
                elif not flushed:
                    desc += (
                        " (calibration fake-quant scale e4m3(f32(amax/6)*f32(448/(G*448/m/6)))"
                        "*inv differs from export scale f32(sf*ws2))"
                    )
        else:
            desc += (
                "; max path: ModelOpt dynamic export computes s = f32(a_b / f32(6*ws2)) with "
                "ws2 = f32(G/(6m)); spec computes s = f32(f32(a_b*m)/G) -> different E4M3 rounding"
            )
        notes.append(desc)
    return notes


def choice_note(w, method, mres, ref, cdiff) -> str:
    m = 256.0 if method == "nvfp4_four_over_six" else 448.0
    G = F32(np.abs(w).max())
    amax_b = np.abs(np_blocks(w)).max(-1).astype(np.float32)
    parts = []
    all_flushed = True
    for r, b in cdiff:
        a = amax_b[r, b]
        mi, ni = int(mres["choice"][r, b]), int(ref["choice"][r, b])
        if method == "nvfp4_mse_fp8_sweep":
            cands = np.array([F32(G * F32(F32(E4M3_POS[k]) / F32(448.0))) for k in (mi, ni)])
        else:
            cands = (a * _mults_for(method)[[mi, ni]]).astype(np.float32)
        fq = mo_fakequant_block_scale(cands[None, :], G, m)[0]
        all_flushed &= bool(fq[1] == 0)
        parts.append(
            f"({int(r)},{int(b)}) amax/G={float(a / G):.2g} modelopt {mi} vs numpy {ni}"
            f" [fake-quant block scale of numpy's pick: {float(fq[1]):.3g}]"
        )
    same = all(mres["sf"][r, b] == ref["sf"][r, b] for r, b in cdiff)
    return (
        "candidate index (choice_u8_hex, ModelOpt's) differs from the spec's at (row,blk): "
        + "; ".join(parts)
        + (
            ". Exported weight_scale/codes are identical: ModelOpt's calibration fake quant "
            "(compute_fp4_scales -> _fp8_eager) casts the block scale to E4M3 with no 2^-9 lower "
            "clamp, so candidates whose scale < 2^-10 flush to 0 (block error = sum w^2) and "
            "lose to the first candidate whose scale rounds up to 2^-9; the spec clamps every "
            "such candidate to 2^-9, ties them, and keeps the first (index 0). Both export "
            "s = 2^-9. numpy_choice_u8_hex holds the spec's indices."
            if same and all_flushed
            else ". numpy_choice_u8_hex holds the spec's indices."
        )
    )


def compare(method: str, mo: dict, ref: dict) -> bool:
    if method.startswith("nvfp4"):
        return (
            np.float32(mo["ws2"]).view(np.uint32) == np.float32(ref["ws2"]).view(np.uint32)
            and np.array_equal(mo["sf"], ref["sf"])
            and np.array_equal(mo["packed"], ref["packed"])
            and np.array_equal(mo["deq"].view(np.uint32), ref["deq"].view(np.uint32))
        )
    return (
        np.array_equal(mo["scale"].view(np.uint32), ref["scale"].view(np.uint32))
        and np.array_equal(mo["codes"], ref["codes"])
        and np.array_equal(mo["deq"].view(np.uint32), ref["deq"].view(np.uint32))
    )


def method_json(method: str, res: dict, source: str) -> dict:
    if method.startswith("nvfp4"):
        d = {
            "source": source,
            "weight_scale_2_f32_hex": f32_hex([res["ws2"]]),
            "weight_scale_e4m3_hex": u8_hex(res["sf"].reshape(-1)),
            "packed_u8_hex": u8_hex(res["packed"].reshape(-1)),
            "dequant_f32_hex": f32_hex(res["deq"].reshape(-1)),
        }
        if method != "nvfp4_max":
            # nvfp4_four_over_six / mse_multiplier: index into the multiplier list;
            # nvfp4_mse_fp8_sweep: the chosen E4M3 code (1..126). One byte per block.
            d["choice_u8_hex"] = u8_hex(res["choice"].reshape(-1))
        return d
    return {
        "source": source,
        "scale_f32_hex": f32_hex(res["scale"]),
        "codes_e4m3_hex": u8_hex(res["codes"].reshape(-1)),
        "dequant_f32_hex": f32_hex(res["deq"].reshape(-1)),
    }


METHODS = [
    "nvfp4_max",
    "nvfp4_four_over_six",
    "nvfp4_mse_multiplier",
    "nvfp4_mse_fp8_sweep",
    "fp8_per_tensor",
    "fp8_per_channel",
]


def numpy_ref(w: np.ndarray, method: str) -> dict:
    if method.startswith("nvfp4"):
        return np_nvfp4(w, method)
    return np_fp8(w, method == "fp8_per_channel")


def generate(out_path: Path) -> None:
    import torch

    mo = ModelOpt()
    doc = {
        "generator": {
            "modelopt": mo.versions["modelopt"],
            "torch": mo.versions["torch"],
            "numpy": np.__version__,
            "triton": mo.versions["triton"],
            "python": sys.version.split()[0],
            "script": "tests/golden/make_format_goldens.py",
            "modelopt_cpu_note": mo.shim_note,
        },
        "conventions": {
            "block_size": BLOCK,
            "nibble": "sign<<3 | e2m1 magnitude code; sign = (w < 0), so -0.0 -> 0x0 and a "
            "negative value that rounds to 0 -> 0x8",
            "packing": "byte i of a row = nib[2i] | nib[2i+1] << 4 (low nibble = even element)",
            "nvfp4_dequant": "e2m1_value(nibble) * f32(float(weight_scale) * weight_scale_2); "
            "nibble 0x8 dequantizes to +0.0",
            "nvfp4_quant_division": "f32(w / f32(float(weight_scale) * weight_scale_2)) "
            "(true float32 division, no reciprocal)",
            "fp8_dequant": "f32(e4m3_value(code) * scale)",
            "float_hex": "little-endian IEEE-754 bytes",
            "choice_u8_hex": "per block: index into the multiplier list (four_over_six: "
            "[1.0, 1.5]; mse_multiplier: mse_multipliers_f32_hex) or the chosen E4M3 code "
            "(mse_fp8_sweep)",
        },
        "mse_multipliers_f32_hex": f32_hex(MSE_MULTIPLIERS),
        "four_over_six_multipliers_f32_hex": f32_hex(FOUR_OVER_SIX_MULTIPLIERS),
        "cases": [],
        "reject_cases": make_reject_cases(),
    }
    # Our linspace reconstruction must equal the one ModelOpt really uses.
    tl_mse = torch.linspace(0.25, 4.0, steps=MSE_NUM_STEPS).numpy()
    assert np.array_equal(tl_mse.view(np.uint32), MSE_MULTIPLIERS.view(np.uint32))

    summary = []
    for case in make_cases():
        w = case["w"]
        dtype_name = case.get("torch_dtype", "float32")
        cj = {"name": case["name"], "shape": list(w.shape), "input_f32_hex": f32_hex(w)}
        if dtype_name != "float32":
            cj["modelopt_weight_dtype"] = dtype_name
        cj["methods"] = {}
        for method in METHODS:
            ref = numpy_ref(w, method)
            mres = mo.run(w, method, dtype_name)
            if method.startswith("nvfp4"):
                mres["choice"] = mo_choice(method, w, mres)
            agree = compare(method, mres, ref)
            entry = method_json(method, mres, "modelopt")
            entry["agree_with_numpy"] = bool(agree)
            notes = [f"ModelOpt {MO_CONFIG[method][0]} ({mres['quantizer']}, export format "
                     f"{mres['format']}), weight dtype {dtype_name}"]  # fmt: skip
            if method in ("nvfp4_four_over_six", "nvfp4_mse_multiplier", "nvfp4_mse_fp8_sweep"):
                notes.append(mo.shim_note)
            if method.startswith("nvfp4") and mres.get("amax_dtype") not in (None, "torch.float32"):
                notes.append(f"ModelOpt per-block _amax dtype {mres['amax_dtype']}")
            if method.startswith("nvfp4") and method != "nvfp4_max":
                cdiff = np.argwhere(mres["choice"] != ref["choice"])
                if len(cdiff):
                    entry["numpy_choice_u8_hex"] = u8_hex(ref["choice"].reshape(-1))
                    notes.append(choice_note(w, method, mres, ref, cdiff))
            if not agree:
                if method.startswith("nvfp4"):
                    notes += explain_nvfp4(case["name"], method, w, mres, ref)
                else:
                    notes.append("fp8 disagreement (see numpy_reference)")
                entry["numpy_reference"] = method_json(method, ref, "numpy")
            entry["note"] = "; ".join(notes)
            cj["methods"][method] = entry
            summary.append((case["name"], method, agree, len(notes)))
        doc["cases"].append(cj)
        print(f"case {case['name']}: " + ", ".join(
            f"{m}={'ok' if cj['methods'][m]['agree_with_numpy'] else 'DIFF'}" for m in METHODS
        ), flush=True)  # fmt: skip

    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out_path} ({out_path.stat().st_size} bytes)")


def verify_numpy(path: Path) -> int:
    """Recompute the NumPy reference for every case and check it against the JSON: entries with
    agree_with_numpy=true must match the ModelOpt data, others their numpy_reference."""
    doc = json.loads(path.read_text())
    assert np.array_equal(hex_f32(doc["mse_multipliers_f32_hex"]), MSE_MULTIPLIERS)
    fails = 0
    for cj in doc["cases"]:
        w = hex_f32(cj["input_f32_hex"]).reshape(cj["shape"])
        for method, entry in cj["methods"].items():
            want = entry if entry["agree_with_numpy"] else entry["numpy_reference"]
            got = method_json(method, numpy_ref(w, method), want["source"])
            keys = [k for k in got if k.endswith("_hex") and k != "choice_u8_hex"]
            bad = [k for k in keys if got[k] != want[k]]
            if bad:
                fails += 1
                print(f"FAIL {cj['name']}/{method}: {bad}")
    print(f"{'OK' if not fails else 'FAILED'}: numpy reference vs {path.name}, {fails} mismatches")
    return 1 if fails else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=OUT_PATH)
    ap.add_argument("--verify-numpy", action="store_true", help="numpy-only check of the JSON")
    args = ap.parse_args()
    if args.verify_numpy:
        return verify_numpy(args.out)
    generate(args.out)
    return verify_numpy(args.out)


if __name__ == "__main__":
    sys.exit(main())
