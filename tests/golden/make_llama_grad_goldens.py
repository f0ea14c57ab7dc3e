#!/usr/bin/env python3
"""Writes tests/golden/data/synth_llama_tiny_grads.json: the next-token cross-entropy loss and
dloss/dY at the output of every nn.Linear of a Llama, computed by transformers (float32, eager
attention, labels = input_ids), which tests/pipeline/test_llama_backward.cpp compares
llama_model::forward_backward against.

Keys:
  "synth_llama_tiny": `mixq synth --arch llama --preset tiny --seed 0`, T = 8 fixed tokens.
  "stories260K": shared/models/stories260K, T = 8 tokens (the start of its reference greedy ids);
                 left out when ../shared is not beside the clone.
Each holds {"tokens": [...], "loss": float, "grads": {module name: [[dY row] * T]}}. Floats are
written as the shortest decimal that round-trips their float32 value (exact, and half the size).

Needs: a built mixq, and a virtualenv with torch and transformers (not needed by CI).
    .venv/bin/python tests/golden/make_llama_grad_goldens.py [--mixq build/mixq]
"""
import argparse
import json
import pathlib
import subprocess
import tempfile

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM

ROOT = pathlib.Path(__file__).resolve().parents[2]
SYNTH_TOKENS = [1, 5, 7, 9, 11, 300, 42, 17]  # as tests/interop/check_hf_loading.py
STORIES = ROOT / ".." / "shared" / "models" / "stories260K"


def grads_of(model_dir: pathlib.Path, tokens: list) -> dict:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    outputs = {}

    def keep(name):
        def hook(_module, _inputs, out):
            out.retain_grad()
            outputs[name] = out
        return hook

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(keep(name))
    ids = torch.tensor([tokens])
    loss = model(ids, labels=ids).loss
    loss.backward()
    return {"tokens": tokens, "loss": float(loss.item()),
            "grads": {name: out.grad[0].detach().numpy().astype(np.float32) for name, out in outputs.items()}}


def dump(value) -> str:
    """JSON with float32 arrays written as their shortest round-trip decimals."""
    if isinstance(value, np.ndarray):
        if value.ndim == 1:
            return "[" + ",".join(np.format_float_positional(x, unique=True, trim="0")
                                  if 1e-4 <= abs(x) < 1e6 or x == 0
                                  else np.format_float_scientific(x, unique=True, trim="0") for x in value) + "]"
        return "[" + ",".join(dump(row) for row in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(json.dumps(k) + ":" + dump(v) for k, v in value.items()) + "}"
    return json.dumps(value)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mixq", default=str(ROOT / "build" / "mixq"))
    args = ap.parse_args()
    golden = {"generator": {"script": "tests/golden/make_llama_grad_goldens.py", "torch": torch.__version__,
                            "transformers": transformers.__version__,
                            "checkpoint": "mixq synth --arch llama --preset tiny --seed 0",
                            "loss": "mean next-token CE, labels = input_ids", "dtype": "float32, eager attention"}}
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "llama"
        subprocess.run([args.mixq, "synth", "--arch", "llama", "--preset", "tiny", "--seed", "0", "--out", str(out)],
                       check=True, stdout=subprocess.DEVNULL)
        golden["synth_llama_tiny"] = grads_of(out, SYNTH_TOKENS)
    if (STORIES / "model.safetensors").exists():
        ref = json.loads((STORIES / "reference.json").read_text())
        golden["stories260K"] = grads_of(STORIES, ref["greedy_from_bos"]["ids"][:8])
    path = ROOT / "tests" / "golden" / "data" / "synth_llama_tiny_grads.json"
    text = dump(golden) + "\n"
    json.loads(text)  # valid JSON
    path.write_text(text)
    print(f"wrote {path} ({len(text)} bytes): " + ", ".join(
        f"{k} loss {golden[k]['loss']:.6f}" for k in ("synth_llama_tiny", "stories260K") if k in golden))


if __name__ == "__main__":
    main()
