#!/usr/bin/env python3
"""Loads `mixq synth` checkpoints with Hugging Face transformers and checks they are complete.

For every architecture: `mixq synth --preset tiny` -> AutoModelForCausalLM.from_pretrained must report
no missing, unexpected or mismatched keys, and a forward pass must give finite logits. For llama,
mixtral, qwen3_moe and nemotron_h (torch fallback for Mamba) it also writes the logits of a fixed
token sequence (eager attention) to tests/golden/data/synth_<arch>_tiny_logits.json, which
tests/pipeline/test_{llama,moe,nemotron_h}_forward.cpp compare mixq's forward pass against.

Needs: a built build/mixq, and a virtualenv with torch and transformers (not needed by CI).
    .venv/bin/python tests/interop/check_hf_loading.py [--mixq build/mixq]
"""
import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

import torch
import transformers
from transformers import AutoModelForCausalLM

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOKENS = [1, 5, 7, 9, 11, 300, 42, 17]
GOLDEN_ARCHS = ("llama", "mixtral", "qwen3_moe", "nemotron_h")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mixq", default=str(ROOT / "build" / "mixq"))
    args = ap.parse_args()
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ["llama", "mixtral", "qwen3_moe", "nemotron_h"]:
            out = pathlib.Path(tmp) / arch
            subprocess.run([args.mixq, "synth", "--arch", arch, "--preset", "tiny", "--seed", "0", "--out", str(out)],
                           check=True, stdout=subprocess.DEVNULL)
            # The MoE goldens use eager attention; the llama golden predates them and was written with
            # the default (sdpa), which differs from eager by ~2e-6: keep it reproducible.
            attn = {"attn_implementation": "eager"} if arch in ("mixtral", "qwen3_moe", "nemotron_h") else {}
            model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True, dtype=torch.float32,
                                                               **attn)
            problems = {k: sorted(v) for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
            with torch.no_grad():
                logits = model(torch.tensor([TOKENS])).logits[0]
            ok = not problems and bool(torch.isfinite(logits).all())
            failures += not ok
            print(f"{arch:<11} {type(model).__name__:<22} {'ok' if ok else 'FAILED'} {problems if problems else ''}")
            if arch in GOLDEN_ARCHS:
                golden = {"generator": {"transformers": transformers.__version__, "torch": torch.__version__,
                                        "checkpoint": f"mixq synth --arch {arch} --preset tiny --seed 0"},
                          "tokens": TOKENS, "logits": logits.tolist()}
                path = ROOT / "tests" / "golden" / "data" / f"synth_{arch}_tiny_logits.json"
                path.write_text(json.dumps(golden) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
