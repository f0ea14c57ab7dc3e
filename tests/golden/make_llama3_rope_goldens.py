#!/usr/bin/env python3
"""Writes tests/golden/data/llama3_rope_logits.json: the logits transformers computes for a Llama with
Llama 3 RoPE scaling (rope_type "llama3"), which tests/pipeline/test_llama_rope.cpp compares
llama_model::forward against.

The checkpoint is `mixq synth --arch llama --preset tiny --seed 0` (head_dim 16) with the golden's
"config_patch" merged into its config.json, so the test rebuilds it instead of committing weights.
rope_theta 100 spreads the 8 wavelengths 2*pi*100^(2i/16) (6.3 .. 353) over the three llama3 bands
of original_max_position_embeddings 64, low_freq_factor 1, high_freq_factor 4: 2 kept (< 16),
3 interpolated (16 .. 64), 3 divided by the factor (> 64). The 100 tokens run past the original
64 positions; the logits of the rows in "positions" are kept (all 100 rows would be ~0.5 MB).
Floats are the shortest decimals that round-trip their float32 values.

Needs: a built mixq, and a virtualenv with torch and transformers (not needed by CI).
    .venv/bin/python tests/golden/make_llama3_rope_goldens.py [--mixq build/mixq]
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
CONFIG_PATCH = {
    "rope_theta": 100.0,
    "max_position_embeddings": 256,
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 64},
}
TOKENS = [(37 * i * i + 11 * i + 1) % 512 for i in range(100)]
POSITIONS = [1, 17, 40, 63, 64, 65, 82, 99]


def row(values: np.ndarray) -> str:
    return "[" + ",".join(np.format_float_positional(x, unique=True, trim="0") for x in values) + "]"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mixq", default=str(ROOT / "build" / "mixq"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "llama"
        subprocess.run([args.mixq, "synth", "--arch", "llama", "--preset", "tiny", "--seed", "0", "--out", str(out)],
                       check=True, stdout=subprocess.DEVNULL)
        config = json.loads((out / "config.json").read_text())
        config.update(CONFIG_PATCH)
        (out / "config.json").write_text(json.dumps(config, indent=2))
        model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager")
        model.eval()
        rotary = model.model.rotary_emb
        assert rotary.rope_type == "llama3" and rotary.attention_scaling == 1.0, (rotary.rope_type,
                                                                                  rotary.attention_scaling)
        with torch.no_grad():
            logits = model(torch.tensor([TOKENS])).logits[0].numpy().astype(np.float32)
    generator = {"script": "tests/golden/make_llama3_rope_goldens.py", "torch": torch.__version__,
                 "transformers": transformers.__version__,
                 "checkpoint": "mixq synth --arch llama --preset tiny --seed 0, config_patch merged",
                 "dtype": "float32, eager attention"}
    text = ("{" + f'"generator":{json.dumps(generator)},"config_patch":{json.dumps(CONFIG_PATCH)},'
            f'"tokens":{json.dumps(TOKENS)},"positions":{json.dumps(POSITIONS)},"logits":['
            + ",".join(row(logits[p]) for p in POSITIONS) + "]}\n")
    json.loads(text)  # valid JSON
    path = ROOT / "tests" / "golden" / "data" / "llama3_rope_logits.json"
    path.write_text(text)
    print(f"wrote {path} ({len(text)} bytes)")


if __name__ == "__main__":
    main()
