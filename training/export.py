"""Write a trained model as a Hugging Face OLMoE-format package (see shared DESIGN.md):
config.json, model.safetensors, tokenizer.json, tokenizer_config.json, golden.json, training.json.

    /usr/bin/python3 -m training.export --config training/configs/switchyard-moe.json   # from the last checkpoint
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from . import safetensors
from .data import BOS, EOS
from .model import ModelConfig, SwitchOlmoe

GOLDEN_PROMPTS = [
    "Call me Ishmael. Some years ago",
    "Mr. Speaker, the state of our Union is",
    "A fortune cookie says: ",
    "The whale",
]
GREEDY_TOKENS = 8
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}Q: {{ message['content'] }}\n"
    "{% else %}A: {{ message['content'] }}\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}A:{% endif %}"
)


def hf_config(cfg: ModelConfig) -> dict:
    return {
        "architectures": ["OlmoeForCausalLM"], "model_type": "olmoe", "torch_dtype": "float32",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers, "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_attention_heads, "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position_embeddings, "rope_theta": cfg.rope_theta, "rope_scaling": None,
        "rms_norm_eps": cfg.rms_norm_eps, "attention_bias": False, "attention_dropout": 0.0, "clip_qkv": None,
        "num_experts": cfg.num_experts, "num_experts_per_tok": 1, "norm_topk_prob": False,
        "output_router_logits": False, "router_aux_loss_coef": cfg.router_aux_loss_coef,
        "initializer_range": 0.02, "use_cache": True, "tie_word_embeddings": False,
        "bos_token_id": BOS, "eos_token_id": EOS, "pad_token_id": EOS,
        # Switch recipe, recorded for the gateway: capacity applies in training only; inference drops nothing.
        "switch": {"router_dtype": "float32", "training_capacity_factor": cfg.capacity_factor,
                   "inference_capacity_factor": None, "router_z_loss_coef": cfg.router_z_loss_coef},
    }


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-to-character table, which Hugging Face's ByteLevel pre-tokenizer and decoder use."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def tokenizer_json() -> dict:
    """Byte-level tokenizer: token id b is byte b; BOS and EOS are special added tokens."""
    vocab = {ch: b for b, ch in sorted(bytes_to_unicode().items())}
    special = [{"id": BOS, "content": "<|bos|>"}, {"id": EOS, "content": "<|eos|>"}]
    return {
        "version": "1.0",
        "truncation": None, "padding": None,
        "added_tokens": [{**t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
                          "special": True} for t in special],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<|bos|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<|bos|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<|bos|>": {"id": "<|bos|>", "ids": [BOS], "tokens": ["<|bos|>"]}},
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": {**vocab, "<|bos|>": BOS, "<|eos|>": EOS}, "merges": []},
    }


def tokenizer_config(context_length: int) -> dict:
    # model_max_length: transformers' tokenizer warns about (and truncation stops at) longer inputs: the context.
    return {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|bos|>", "eos_token": "<|eos|>",
            "add_bos_token": True, "model_max_length": context_length, "chat_template": CHAT_TEMPLATE}


def encode(text: str) -> list[int]:
    return [BOS] + list(text.encode("utf-8"))


@torch.no_grad()
def golden(model: SwitchOlmoe) -> dict:
    """Reference outputs of the PyTorch model in eval mode (no capacity limit), for cross-checks."""
    model.eval()
    cases = []
    for prompt in GOLDEN_PROMPTS:
        ids = encode(prompt)
        logits, stats = model(torch.tensor([ids]), capacity_factor=None)
        generated, seq = [], list(ids)
        for _ in range(GREEDY_TOKENS):
            step_logits, _ = model(torch.tensor([seq]), capacity_factor=None)
            nxt = int(step_logits[0, -1].argmax())
            generated.append(nxt)
            seq.append(nxt)
        cases.append({
            "prompt": prompt, "input_ids": ids,
            "last_logits": [float(x) for x in logits[0, -1]],
            "greedy_next_tokens": generated,
            "router": [{"layer": i, "expert": s.choice.tolist(), "gate": [float(g) for g in s.gate]}
                       for i, s in enumerate(stats)],
        })
    return {"description": "PyTorch reference (training/model.py, eval mode, fp32, no capacity limit); "
                           "input_ids include BOS; router lists one entry per prompt position",
            "tolerance": {"logits_max_abs": 1e-3}, "cases": cases}


def validation_record(windows: list[tuple[str, "object"]], seq_len: int) -> dict:
    """The exact held-out windows the trainer scored, so other tools reproduce its validation bits per byte."""
    return {"description": "held-out validation windows (token ids incl. BOS/EOS); bits per byte are computed over "
                           "targets that are bytes (< 256), predicting tokens 1..n from 0..n-1 of each window",
            "seq_len": seq_len,
            "windows": [{"source": name, "tokens": [int(t) for t in w]} for name, w in windows]}


def calibration_text(corpus, bytes_per_source: int = 16384, seed: int = 99) -> str:
    """Text from the training split (never validation) for one-shot pruning calibration: whole documents' starts."""
    import numpy as np
    rng = np.random.default_rng(seed)
    parts = []
    for name, stream in zip(corpus.names, corpus.train):
        starts = np.flatnonzero(stream == BOS)
        taken = 0
        for s in rng.permutation(starts):
            end = np.flatnonzero(stream[s:] == EOS)
            doc = stream[s + 1:s + (end[0] if len(end) else 0)]
            text = bytes(doc[:2048].astype(np.uint8)).decode("utf-8", errors="ignore").strip()
            if len(text) < 64:
                continue
            parts.append(text)
            taken += len(text)
            if taken >= bytes_per_source:
                break
    return "\n\n".join(parts) + "\n"


def export_package(model: SwitchOlmoe, summary: dict, out: Path, validation: dict | None = None,
                   calibration: str | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    safetensors.save({k: v for k, v in model.state_dict().items()}, out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(hf_config(model.cfg), indent=2) + "\n")
    (out / "tokenizer.json").write_text(json.dumps(tokenizer_json(), ensure_ascii=False, indent=1) + "\n")
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(model.cfg.max_position_embeddings), indent=2) + "\n")
    (out / "golden.json").write_text(json.dumps(golden(model)) + "\n")
    (out / "training.json").write_text(json.dumps(training_record(summary), indent=1) + "\n")
    if validation is not None:
        (out / "validation.json").write_text(json.dumps(validation, separators=(",", ":")) + "\n")
    if calibration is not None:
        (out / "calibration.txt").write_text(calibration)


def training_record(summary: dict) -> dict:
    history = summary["history"]
    final = history["val"][-1] if history["val"] else {}
    return {
        "name": summary["config"].get("name"),
        "command": "/usr/bin/python3 -m training.train --config training/configs/" +
                   f"{summary['config'].get('name')}.json",
        "parameters": summary["parameters"],
        "corpus": summary["corpus"],
        "steps": summary["config"]["steps"], "tokens": history["tokens"],
        "training_seconds": round(history["seconds"], 1),
        "dropped_token_fraction_at_training_capacity": history["dropped_tokens"] / max(1, history["routed_tokens"]),
        "final_validation": final,
        "config": summary["config"],
        "curves": {"train": history["train"], "val": history["val"]},
    }


def main(argv: list[str] | None = None) -> int:
    from .train import REPO, checkpoint_path, load_config
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "training/configs/switchyard-moe.json")
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    state = torch.load(checkpoint_path(cfg))
    model = SwitchOlmoe(cfg["model"])
    model.load_state_dict(state["model"])
    from .data import build_corpus
    corpus = build_corpus(REPO / "node_modules", Path(cfg["fortunes_dir"]), cfg["source_weights"],
                          cfg.get("max_bytes_per_source"))
    summary = {"config": {k: (v.to_dict() if isinstance(v, ModelConfig) else v) for k, v in cfg.items()},
               "parameters": model.parameter_counts(), "corpus": corpus.info, "history": state["history"]}
    windows = corpus.val_windows(cfg["seq_len"], cfg["val_windows_per_source"])
    export_package(model, summary, REPO / cfg["export_dir"], validation_record(windows, cfg["seq_len"]),
                   calibration_text(corpus))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
