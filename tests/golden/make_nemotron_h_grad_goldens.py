#!/usr/bin/env python3
"""Writes tests/golden/data/{synth_nemotron_h_tiny,nemotron_h_tiny}_grads.json: the next-token
cross-entropy loss and dloss/dY at the output of every linear of a Nemotron-H, computed by transformers' autograd (float32, eager
attention, the PyTorch Mamba-2 path, labels = input_ids), which tests/pipeline/test_nemotron_h_backward.cpp
compares nemotron_h_model::forward_backward against.

Files:
  synth_nemotron_h_tiny_grads.json: `mixq synth --arch nemotron_h --preset tiny --seed 0` (blocks
                 M E M * E -, latent MoE with a shared expert), the 8 tokens of
                 synth_nemotron_h_tiny_logits.json.
  nemotron_h_tiny_grads.json: shared/models/nemotron-h-tiny (trained; BF16 weights computed in
                 float32), the first 7 tokens of the held-out TinyStories stream (7 keeps the file
                 under 400 KB); not rewritten when ../shared is not beside the clone.
Each holds "generator" and {"tokens", "loss", "grads": {module: [[dY row] * rows]}, "dt_clamped", "min_topk_margin"}
under mixq's (on-disk) module names: "backbone.layers.N.mixer.{in_proj,out_proj,q_proj,...,gate,
fc1_latent_proj,fc2_latent_proj,experts.E.{up,down}_proj,shared_experts.{up,down}_proj}", "lm_head".

What is taken where, as in make_llama_grad_goldens.py for Mixtral:
- every nn.Linear: the retained gradient of its output (the MoE latent projections see [T, *] inputs,
  the others [1, T, *]);
- the router (NemotronHTopkRouter, not an nn.Linear): the gradient of its first output, the fp32 logits;
- the routed experts (fused 3-D up_proj [E, I, L] / down_proj [E, L, I]): each experts module's
  forward is replaced, per instance, by a copy of its eager loop that retains each expert's up output
  (before relu2) and down output (before the routing weight). Rows are the expert's tokens in
  ascending position order, as mixq's hook sees them; an expert with no token gets [].

Numerics that have to agree with mixq:
- Mamba-2 runs transformers' PyTorch path (chunked SSD, F.conv1d): the script refuses to run when
  mamba_ssm or causal_conv1d is importable, and the model is in eval mode (no fused training path).
- transformers' PyTorch path clamps dt = softplus(dt + dt_bias) below at config.time_step_min and
  ignores time_step_limit; mixq clamps at time_step_limit[0] (no clamp by default). The synthetic
  model's time_step_min is 1e-3, which clamps some steps (counted in "dt_clamped"): the test loads it
  with time_step_limit [time_step_min, null], so the clamp and its zero gradient are compared too.
  nemotron-h-tiny sets time_step_min 1e-6 so that no step is clamped; the script checks that.
- The top-k choice is discrete: "min_topk_margin" is the smallest gap between the k-th and the
  (k+1)-th selection score (sigmoid + correction bias) over every token and MoE block, far above
  the float32 differences between the two implementations.
Floats are written as the shortest decimal that round-trips their float32 value.

Needs: a built mixq, and a virtualenv with torch and transformers (not needed by CI).
    .venv/bin/python tests/golden/make_nemotron_h_grad_goldens.py [--mixq build/mixq]
"""
import argparse
import importlib.util
import pathlib
import subprocess
import tempfile
import types
import json

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from transformers import AutoModelForCausalLM

from make_llama_grad_goldens import ROOT, SYNTH_TOKENS, dump

TINY = ROOT / ".." / "shared" / "models" / "nemotron-h-tiny"
VALID = ROOT / ".." / "shared" / "data" / "tinystories" / "TinyStories-valid-reduced.tok512.u16.bin"
TINY_TOKENS = 7


def experts_capture(self, hidden_states, top_k_index, top_k_weights, record):
    """NemotronHExperts' eager loop, keeping each expert's up and down outputs."""
    final_hidden_states = torch.zeros_like(hidden_states, dtype=top_k_weights.dtype)
    with torch.no_grad():
        expert_mask = F.one_hot(top_k_index, num_classes=self.num_experts + 1).permute(2, 1, 0)
        expert_hit = torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero().squeeze(-1)
    for expert_idx in expert_hit:
        expert_idx = expert_idx.item()
        if expert_idx == self.num_experts:
            continue
        top_k_pos, token_idx = torch.where(expert_mask[expert_idx])
        if token_idx.numel() == 0:
            continue
        up = F.linear(hidden_states[token_idx], self.up_proj[expert_idx])
        down = F.linear(self.act_fn(up), self.down_proj[expert_idx])
        for t in (up, down):
            t.retain_grad()
        record[expert_idx] = (token_idx, up, down)
        weighted = down * top_k_weights[token_idx, top_k_pos, None]
        final_hidden_states.index_add_(0, token_idx, weighted.to(final_hidden_states.dtype))
    return final_hidden_states.to(hidden_states.dtype)


def as_rows(t: torch.Tensor) -> np.ndarray:
    """[T, out] float32 from a [1, T, out] or [T, out] gradient."""
    t = t.detach()
    return (t[0] if t.dim() == 3 else t).numpy().astype(np.float32)


def mixq_name(hf_name: str) -> str:
    """transformers v5 loads backbone.* as model.*; mixq names modules as the checkpoint does."""
    return "backbone." + hf_name[len("model."):] if hf_name.startswith("model.") else hf_name


def grads_of(model_dir: pathlib.Path, tokens: list) -> dict:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    assert type(model).__name__ == "NemotronHForCausalLM", type(model).__name__
    outputs, routers, experts = {}, {}, {}
    stats = {"dt_clamped": 0, "min_topk_margin": float("inf")}

    def keep(name):
        def hook(_module, _inputs, out):
            out.retain_grad()
            outputs[name] = out
        return hook

    def keep_router(name):
        def hook(module, _inputs, out):
            out[0].retain_grad()
            routers[name] = out[0]
            with torch.no_grad():  # how close the top-k choice came to flipping
                choice = out[0].sigmoid() + module.e_score_correction_bias
                top = choice.topk(module.top_k + 1, dim=-1).values
                stats["min_topk_margin"] = min(stats["min_topk_margin"],
                                               float((top[:, -2] - top[:, -1]).min()))
        return hook

    def count_clamped(mixer):
        def hook(_module, _inputs, out):
            with torch.no_grad():
                dt = out[..., mixer.intermediate_size + mixer.conv_dim:] + mixer.dt_bias
                stats["dt_clamped"] += int((F.softplus(dt) < mixer.time_step_limit[0]).sum())
        return hook

    for name, module in model.named_modules():
        kind = type(module).__name__
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(keep(name))
        elif kind == "NemotronHTopkRouter":
            module.register_forward_hook(keep_router(name))
        elif kind == "NemotronHExperts":
            record = experts.setdefault(name, {})
            module.forward = types.MethodType(
                lambda self, h, i, w, record=record: experts_capture(self, h, i, w, record), module)
        elif kind == "NemotronHMamba2Mixer":
            module.in_proj.register_forward_hook(count_clamped(module))
    ids = torch.tensor([tokens])
    loss = model(ids, labels=ids, use_cache=False).loss
    loss.backward()

    grads = {mixq_name(name): as_rows(out.grad) for name, out in outputs.items()}
    for name, logits in routers.items():
        grads[mixq_name(name)] = as_rows(logits.grad)
    for name, module in model.named_modules():
        if name not in experts:
            continue
        for e in range(module.num_experts):
            if e in experts[name]:
                token_idx, up, down = experts[name][e]
                order = torch.argsort(token_idx)  # ascending positions, as mixq's hook sees them
                ys = [up.grad[order], down.grad[order]]
            else:
                ys = [torch.zeros(0, module.intermediate_dim), torch.zeros(0, module.up_proj.shape[2])]
            for leaf, y in zip(("up_proj", "down_proj"), ys):
                grads[f"{mixq_name(name)}.{e}.{leaf}"] = as_rows(y)
    return {"tokens": tokens, "loss": float(loss.item()), "dt_clamped": stats["dt_clamped"],
            "min_topk_margin": stats["min_topk_margin"], "grads": grads}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mixq", default=str(ROOT / "build" / "mixq"))
    args = ap.parse_args()
    for kernel in ("mamba_ssm", "causal_conv1d"):  # their fused kernels are not the math mixq follows
        if importlib.util.find_spec(kernel) is not None:
            raise SystemExit(f"{kernel} is installed: run in an environment without it (PyTorch Mamba-2 path)")
    generator = {"script": "tests/golden/make_nemotron_h_grad_goldens.py", "torch": torch.__version__,
                 "transformers": transformers.__version__, "loss": "mean next-token CE, labels = input_ids",
                 "dtype": "float32, eager attention, PyTorch Mamba-2 path"}
    goldens = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "nemotron_h"
        subprocess.run([args.mixq, "synth", "--arch", "nemotron_h", "--preset", "tiny", "--seed", "0", "--out",
                        str(out)], check=True, stdout=subprocess.DEVNULL)
        goldens["synth_nemotron_h_tiny"] = grads_of(out, SYNTH_TOKENS)
        goldens["synth_nemotron_h_tiny"]["checkpoint"] = "mixq synth --arch nemotron_h --preset tiny --seed 0"
    if (TINY / "model.safetensors").exists():
        tokens = np.fromfile(VALID, dtype=np.uint16)[:TINY_TOKENS].astype(int).tolist()
        goldens["nemotron_h_tiny"] = grads_of(TINY, tokens)
        goldens["nemotron_h_tiny"]["checkpoint"] = "shared/models/nemotron-h-tiny"
        if goldens["nemotron_h_tiny"]["dt_clamped"]:
            raise SystemExit("nemotron-h-tiny: transformers clamps dt at time_step_min here; mixq would not")
    for key, g in goldens.items():
        path = ROOT / "tests" / "golden" / "data" / f"{key}_grads.json"
        text = dump({"generator": generator | {"checkpoint": g.pop("checkpoint")}, **g}) + "\n"
        json.loads(text)  # valid JSON
        path.write_text(text)
        print(f"wrote {path} ({len(text)} bytes): loss {g['loss']:.7f}, {len(g['grads'])} modules, "
              f"dt clamped {g['dt_clamped']}, min top-k margin {g['min_topk_margin']:.3g}")

if __name__ == "__main__":
    main()
