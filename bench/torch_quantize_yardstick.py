"""The GPU quantizers' peer yardstick: NVFP4 `max` and FP8 per-tensor `max` written in eager PyTorch
(the tensor operations ModelOpt's fake quantizers are built from) and the same functions through
torch.compile (fused Triton kernels), timed with CUDA events on the same
8192 x 8192 BF16 weight as bench/bench_cuda_quantize.cpp (N(0, 0.02), every 37th input channel x50),
next to a device-to-device copy. Prints GB/s of BF16 input, like the C++ benchmark.

    python3 bench/torch_quantize_yardstick.py
"""
import torch

ROWS = COLS = 8192
E4M3_MAX = 448.0


def weight():
    g = torch.Generator(device="cuda").manual_seed(1)
    w = torch.randn(ROWS, COLS, device="cuda", generator=g) * 0.02
    w[:, 3::37] *= 50.0
    return w.to(torch.bfloat16)


def nvfp4_max(w):
    x = w.float()
    ws2 = x.abs().amax() / (6.0 * E4M3_MAX)
    blocks = x.view(-1, 16)
    block_amax = blocks.abs().amax(dim=1)
    s = block_amax / (6.0 * ws2)
    s = torch.where(s == 0, torch.ones_like(s), s).clamp(2.0**-9, E4M3_MAX)
    s8 = s.to(torch.float8_e4m3fn)
    q = blocks.abs() / (s8.float() * ws2)[:, None]
    code = ((q > 0.25).to(torch.uint8) + (q >= 0.75) + (q > 1.25) + (q >= 1.75) + (q > 2.5) + (q >= 3.5) + (q > 5.0))
    code = code | ((blocks < 0).to(torch.uint8) << 3)
    packed = code[:, 0::2] | (code[:, 1::2] << 4)
    return packed, s8


def fp8_per_tensor_max(w):
    x = w.float()
    scale = x.abs().amax() / E4M3_MAX
    return (x / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn), scale


def timed(fn, w, repeats=20):
    for _ in range(3):
        fn(w)
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        fn(w)
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) * 1e-3)
    times.sort()
    return times[len(times) // 2]


def main():
    w = weight()
    out = torch.empty_like(w)
    rows = [("copy (d2d)", lambda t: out.copy_(t)), ("nvfp4 max", nvfp4_max), ("fp8 per-tensor max", fp8_per_tensor_max)]
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(f"{'eager PyTorch':24s} {'median us':>10s} {'GB/s':>8s}")
    for name, fn in rows:
        t = timed(fn, w)
        print(f"{name:24s} {t * 1e6:10.1f} {ROWS * COLS * 2 / t * 1e-9:8.1f}")
    for name, fn in rows[1:]:
        try:
            t = timed(torch.compile(fn), w)
            print(f"{name + ' (compiled)':24s} {t * 1e6:10.1f} {ROWS * COLS * 2 / t * 1e-9:8.1f}")
        except Exception as e:  # a missing compiler toolchain on the machine: report, keep the eager rows
            print(f"{name} (compiled): {type(e).__name__}: {str(e).splitlines()[0][:120]}")


if __name__ == "__main__":
    main()
