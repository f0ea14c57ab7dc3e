#!/usr/bin/env python3
"""Writes tests/golden/data/synth_llama_tiny_grads.json: the next-token cross-entropy loss and
dloss/dY at the output of every nn.Linear of a Llama, computed by transformers (float32, eager
attention, labels = input_ids), which tests/pipeline/test_llama_backward.cpp compares
llama_model::forward_backward against.

Keys:
  "synth_llama_tiny": `mixq synth --arch llama --preset tiny --seed 0`, T = 8 fixed tokens.
  "stories260K": shared/models/stories260K, T = 8 tokens (the start of its reference greedy ids);
                 left out when ../shared is not beside the clone.
  "synth_mixtral_tiny", "synth_qwen3_moe_tiny": `mixq synth --arch {mixtral,qwen3_moe} --preset tiny
                 --seed 0`, the same 8 tokens.
Each holds {"tokens": [...], "loss": float, "grads": {module name: [[dY row] * T]}}, under mixq's
module names (model_spec: Mixtral "...block_sparse_moe.gate" / "...experts.E.{w1,w3,w2}").

MoE: transformers v5 stores the experts as fused 3-D weights (gate_up_proj [E, 2I, H], down_proj
[E, H, I]) and calls them with F.linear in a loop, and the router (a TopKRouter, not an nn.Linear)
returns its logits. So the router's dY is the retained gradient of the router module's first output,
and each experts module's forward is replaced (per instance) by a copy of the eager loop that keeps,
per expert, gate and up (the two chunks of the fused gate_up output, i.e. the outputs of the
separate gate / up linears) and the down output, and retains their gradients. An expert's rows are
its routed tokens in ascending position order (the order mixq's linear-output hook sees), not the
(top-k slot, position) order of the eager loop; an expert no token is routed to gets [] (T_e = 0). Floats are
written as the shortest decimal that round-trips their float32 value (exact, and half the size).

Needs: a built mixq, and a virtualenv with torch and transformers (not needed by CI).
    .venv/bin/python tests/golden/make_llama_grad_goldens.py [--mixq build/mixq]
"""
import argparse
import json
import pathlib
import re
import subprocess
import tempfile
import types

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


def eager_experts_capture(self, hidden_states, top_k_index, top_k_weights, record):
    """The eager MixtralExperts / Qwen3MoeExperts loop, keeping each expert's linear outputs."""
    final_hidden_states = torch.zeros_like(hidden_states)
    with torch.no_grad():
        expert_mask = torch.nn.functional.one_hot(top_k_index, num_classes=self.num_experts + 1)
        expert_mask = expert_mask.permute(2, 1, 0)
        expert_hit = torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero()
    for expert_idx in expert_hit:
        expert_idx = expert_idx[0]
        if expert_idx == self.num_experts:
            continue
        top_k_pos, token_idx = torch.where(expert_mask[expert_idx])
        current_state = hidden_states[token_idx]
        gate, up = torch.nn.functional.linear(current_state, self.gate_up_proj[expert_idx]).chunk(2, dim=-1)
        current_hidden_states = self.act_fn(gate) * up
        current_hidden_states = torch.nn.functional.linear(current_hidden_states, self.down_proj[expert_idx])
        for t in (gate, up, current_hidden_states):
            t.retain_grad()
        record[int(expert_idx)] = (token_idx, gate, up, current_hidden_states)
        current_hidden_states = current_hidden_states * top_k_weights[token_idx, top_k_pos, None]
        final_hidden_states.index_add_(0, token_idx, current_hidden_states.to(final_hidden_states.dtype))
    return final_hidden_states


def moe_grads_of(model_dir: pathlib.Path, tokens: list) -> dict:
    """grads_of for Mixtral / Qwen3-MoE: also the router and every expert linear (see the docstring)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    mixtral = model.config.model_type == "mixtral"
    outputs, routers, experts = {}, {}, {}

    def keep(name):
        def hook(_module, _inputs, out):
            out.retain_grad()
            outputs[name] = out
        return hook

    def keep_router(name):
        def hook(_module, _inputs, out):
            out[0].retain_grad()
            routers[name] = out[0]
        return hook

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(keep(name))
        elif name.endswith(".mlp.gate"):
            module.register_forward_hook(keep_router(name))
        elif name.endswith(".mlp.experts"):
            record = experts.setdefault(name, {})
            module.forward = types.MethodType(
                lambda self, h, i, w, record=record: eager_experts_capture(self, h, i, w, record), module)
    ids = torch.tensor([tokens])
    loss = model(ids, labels=ids).loss
    loss.backward()

    def mixq_name(hf_name):  # transformers v5 "model.layers.N.mlp" is mixq's "...block_sparse_moe"
        return re.sub(r"\.mlp$", ".block_sparse_moe", hf_name) if mixtral else hf_name

    grads = {name: out.grad[0].detach().numpy().astype(np.float32) for name, out in outputs.items()}
    for name, logits in routers.items():
        grads[mixq_name(name[:-len(".gate")]) + ".gate"] = logits.grad.detach().numpy().astype(np.float32)
    leaves = ("w1", "w3", "w2") if mixtral else ("gate_proj", "up_proj", "down_proj")
    for name, module in model.named_modules():
        if name not in experts:
            continue
        prefix = mixq_name(name[:-len(".experts")]) + ".experts"
        for e in range(module.num_experts):
            if e in experts[name]:
                token_idx, gate, up, down = experts[name][e]
                order = torch.argsort(token_idx)  # ascending positions, as mixq's hook sees them
                ys = [gate.grad[order], up.grad[order], down.grad[order]]
            else:
                inter = module.gate_up_proj.shape[1] // 2
                ys = [torch.zeros(0, inter), torch.zeros(0, inter), torch.zeros(0, module.hidden_dim)]
            for leaf, y in zip(leaves, ys):
                grads[f"{prefix}.{e}.{leaf}"] = y.detach().numpy().astype(np.float32)
    return {"tokens": tokens, "loss": float(loss.item()), "grads": grads}


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
    for arch in ("mixtral", "qwen3_moe"):
        with tempfile.TemporaryDirectory() as tmp:
            out = pathlib.Path(tmp) / arch
            subprocess.run([args.mixq, "synth", "--arch", arch, "--preset", "tiny", "--seed", "0", "--out", str(out)],
                           check=True, stdout=subprocess.DEVNULL)
            golden[f"synth_{arch}_tiny"] = moe_grads_of(out, SYNTH_TOKENS)
    path = ROOT / "tests" / "golden" / "data" / "synth_llama_tiny_grads.json"
    text = dump(golden) + "\n"
    json.loads(text)  # valid JSON
    path.write_text(text)
    print(f"wrote {path} ({len(text)} bytes): " + ", ".join(
        f"{k} loss {golden[k]['loss']:.6f}" for k in ("synth_llama_tiny", "stories260K", "synth_mixtral_tiny", "synth_qwen3_moe_tiny")
        if k in golden))


if __name__ == "__main__":
    main()
