#!/usr/bin/env python3
"""Forward and forward+backward tokens/s of mixq (build/bench/bench_model) next to PyTorch
(transformers, float32, eager) on the same checkpoint, windows, tokens and thread count, in the
same run, plus the GEMM peak bench_model measures, the linears' fraction of it, and each
process's peak resident memory. Each runs as it runs in practice: mixq spreads the windows over the
threads (as its evaluation and calibration do), PyTorch uses the threads inside each operator;
with --threads 1 both are one thread. The backward is the activation-gradient pass mixq's scoring needs:
PyTorch gets frozen weights and an input that requires grad, so it computes no weight gradients
either.

    .venv/bin/python bench/model_vs_pytorch.py --threads 1 [--model DIR ...] [--ctx 512] [--windows 8]

Default models: ../shared/models/stories260K and `mixq synth --preset small` Llama and Nemotron-H
(written to /tmp/mixq-bench-models on first use).
"""
import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "tinystories" / "TinyStories-valid-reduced.tok512.u16.bin"


def torch_run(model_dir, ctx, windows, threads):
    """Runs in a child process so its peak memory is its own."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ctx = min(ctx, getattr(model.config, "max_position_embeddings", ctx) or ctx)
    tokens = np.fromfile(DATA, dtype="<u2").astype(np.int64)
    while len(tokens) < ctx * windows:
        tokens = np.concatenate([tokens, tokens])
    batches = [torch.tensor(tokens[w * ctx:(w + 1) * ctx])[None] for w in range(windows)]
    with torch.inference_mode():
        model(batches[0])
        start = time.perf_counter()
        for ids in batches:
            model(ids)
        fwd = time.perf_counter() - start
    for p in model.parameters():
        p.requires_grad_(False)
    embed = model.get_input_embeddings()

    def fwd_bwd(ids):
        x = embed(ids).detach().requires_grad_(True)
        model(inputs_embeds=x, labels=ids).loss.backward()

    fwd_bwd(batches[0])
    start = time.perf_counter()
    for ids in batches:
        fwd_bwd(ids)
    fwd_bwd_s = time.perf_counter() - start
    return {"forward_tokens_per_s": ctx * windows / fwd, "forward_backward_tokens_per_s": ctx * windows / fwd_bwd_s,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, "torch": torch.__version__}


def default_models(mixq):
    models = [ROOT.parent / "shared" / "models" / "stories260K"]
    for arch in ("llama", "nemotron_h"):
        out = pathlib.Path("/tmp/mixq-bench-models") / f"{arch}-small"
        if not out.exists():
            subprocess.run([mixq, "synth", "--arch", arch, "--preset", "small", "--out", str(out)], check=True)
        models.append(out)
    return models


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", action="append", help="checkpoint directory (repeatable)")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--build", default=str(ROOT / "build"))
    ap.add_argument("--torch-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.torch_child:
        print(json.dumps(torch_run(args.torch_child, args.ctx, args.windows, args.threads)))
        return
    mixq = str(pathlib.Path(args.build) / "mixq")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    rows = []
    for model in args.model or default_models(mixq):
        ours = json.loads(subprocess.run(
            [str(pathlib.Path(args.build) / "bench" / "bench_model"), "--model", str(model), "--data", str(DATA),
             "--ctx", str(args.ctx), "--windows", str(args.windows)],
            check=True, capture_output=True, text=True, env=env).stdout)
        theirs = json.loads(subprocess.run(
            [sys.executable, __file__, "--torch-child", str(model), "--ctx", str(args.ctx), "--windows",
             str(args.windows), "--threads", str(args.threads)],
            check=True, capture_output=True, text=True, env=env).stdout.strip().splitlines()[-1])
        rows.append((pathlib.Path(model).name, ours, theirs))
    print(f"threads {args.threads}, ctx {args.ctx}, {args.windows} windows; GEMM peak (sgemm 2048^3) "
          f"{rows[0][1]['gemm_peak_gflops']:.1f} GFLOP/s; torch {rows[0][2]['torch']}\n")
    print("| model | pass | mixq tokens/s | PyTorch tokens/s | mixq / PyTorch | mixq linears, % of GEMM peak "
          "| peak RSS mixq / PyTorch (MiB) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, ours, theirs in rows:
        for key, label, frac in (("forward", "forward", "forward_linear_fraction_of_peak"),
                                 ("forward_backward", "forward+backward", "forward_backward_linear_fraction_of_peak")):
            a, b = ours[f"{key}_tokens_per_s"], theirs[f"{key}_tokens_per_s"]
            print(f"| {name} | {label} | {a:,.0f} | {b:,.0f} | {a / b:.2f}x | {100 * ours[frac]:.0f}% "
                  f"| {ours['peak_rss_mib']:.0f} / {theirs['peak_rss_mib']:.0f} |")


if __name__ == "__main__":
    main()
