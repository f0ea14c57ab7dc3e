#!/usr/bin/env python3
"""Perplexity evaluation speed: `mixq eval` next to PyTorch (transformers, float32, same threads, same
windows) on the same checkpoint and token stream, in the same run. Both perplexities are printed so
the comparison is of the same computation.

    .venv/bin/python bench/eval_vs_pytorch.py [--model ../shared/models/stories260K] [--ctx 512] [--threads 2]
"""
import argparse
import pathlib
import re
import subprocess
import time

import numpy as np
import torch
from transformers import AutoModelForCausalLM

ROOT = pathlib.Path(__file__).resolve().parents[1]


def torch_eval(model_dir, tokens, ctx):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    nll, predicted = 0.0, 0
    start = time.perf_counter()
    with torch.inference_mode():
        for w in range(0, len(tokens), ctx):
            window = torch.tensor(tokens[w:w + ctx], dtype=torch.long)[None]
            if window.shape[1] < 2:
                continue
            logp = torch.log_softmax(model(window).logits[0, :-1].double(), dim=-1)
            nll -= logp.gather(1, window[0, 1:, None]).sum().item()
            predicted += window.shape[1] - 1
    seconds = time.perf_counter() - start
    return np.exp(nll / predicted), len(tokens) / seconds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT.parent / "shared" / "models" / "stories260K"))
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "tinystories" /
                                          "TinyStories-valid-reduced.tok512.u16.bin"))
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mixq", default=str(ROOT / "build" / "mixq"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tokens = np.fromfile(args.data, dtype="<u2").astype(np.int64).tolist()
    out = subprocess.run([args.mixq, "eval", "--model", args.model, "--data", args.data, "--ctx", str(args.ctx)],
                         check=True, capture_output=True, text=True, env={"OMP_NUM_THREADS": str(args.threads)}).stdout
    mixq_ppl = float(re.search(r"ppl:\s+([0-9.]+)", out).group(1))
    mixq_tps = float(re.search(r"speed:\s+([0-9.]+)", out).group(1))
    torch_ppl, torch_tps = torch_eval(args.model, tokens, args.ctx)
    print(f"threads {args.threads}, ctx {args.ctx}, {len(tokens)} tokens")
    print(f"mixq    ppl {mixq_ppl:.6f}  {mixq_tps:10.0f} tokens/s")
    print(f"pytorch ppl {torch_ppl:.6f}  {torch_tps:10.0f} tokens/s  (torch {torch.__version__})")
    print(f"mixq / pytorch speed: {mixq_tps / torch_tps:.2f}x")


if __name__ == "__main__":
    main()
