"""Train the bundled Switch-MoE model.  Run with Debian's Python:

    /usr/bin/python3 -m training.train --config training/configs/switchyard-moe.json [--fresh]

Resumes from the run folder's checkpoint unless --fresh; prints one progress line per log interval;
exports the package to `export_dir` when the last step is done.
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

from .cli import run_cli
from .data import build_corpus
from .loop import Interval, batch_at, count_routing, learning_rate, record_eval, restore
from .model import ModelConfig, SwitchOlmoe

REPO = Path(__file__).resolve().parent.parent


def load_config(path: Path) -> dict:
    cfg = json.loads(path.read_text())
    cfg["model"] = ModelConfig(**cfg["model"])
    return cfg


def make_optimizer(model: SwitchOlmoe, cfg: dict) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg["weight_decay"]},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg["lr"], betas=(0.9, 0.95))


@torch.no_grad()
def evaluate(model: SwitchOlmoe, windows, num_experts: int) -> dict:
    """Validation bits per byte (targets that are bytes, not BOS/EOS) and the router's load per layer."""
    model.eval()
    nats, count = 0.0, 0
    per_source: dict[str, list[float]] = {}
    load = np.zeros((model.cfg.num_hidden_layers, num_experts), dtype=np.int64)
    for i in range(0, len(windows), 8):
        chunk = windows[i:i + 8]
        block = torch.from_numpy(np.stack([w for _, w in chunk]))
        ids, targets = block[:, :-1], block[:, 1:]
        logits, stats = model(ids, capacity_factor=None)
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                               reduction="none").view(targets.shape)
        is_byte = targets < 256
        for row, (name, _) in enumerate(chunk):
            acc = per_source.setdefault(name, [0.0, 0])
            acc[0] += float(ce[row][is_byte[row]].sum())
            acc[1] += int(is_byte[row].sum())
        nats += float(ce[is_byte].sum())
        count += int(is_byte.sum())
        for layer, s in enumerate(stats):
            load[layer] += np.bincount(s.choice.numpy(), minlength=num_experts)
    model.train()
    share = load / load.sum(axis=1, keepdims=True)
    return {"val_bpb": nats / count / math.log(2),
            "val_bpb_per_source": {k: v[0] / v[1] / math.log(2) for k, v in per_source.items()},
            "val_tokens": count, "expert_share": share.round(4).tolist()}


def checkpoint_path(cfg: dict) -> Path:
    return REPO / cfg["run_dir"] / "checkpoint.pt"


def save_checkpoint(path: Path, model, optimizer, step: int, history: dict):
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "history": history}, tmp)
    os.replace(tmp, path)  # atomic: a kill mid-save never corrupts the last checkpoint


def train(config_path: Path, fresh: bool = False, export: bool = True, stop_at: int | None = None,
          run_dir: str | None = None) -> dict:
    """Train to cfg["steps"] (or stop early at `stop_at`, leaving a checkpoint to resume from)."""
    cfg = load_config(config_path)
    if run_dir is not None:
        cfg["run_dir"] = run_dir
    mc: ModelConfig = cfg["model"]
    torch.manual_seed(cfg["seed"])
    torch.set_num_threads(cfg.get("threads", os.cpu_count() or 1))
    corpus = build_corpus(REPO / "node_modules", Path(cfg["fortunes_dir"]), cfg["source_weights"],
                          cfg.get("max_bytes_per_source"))
    windows = corpus.val_windows(cfg["seq_len"], cfg["val_windows_per_source"])
    model = SwitchOlmoe(mc)
    optimizer = make_optimizer(model, cfg)
    run_dir = REPO / cfg["run_dir"]
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = checkpoint_path(cfg)
    step, history = 0, {"train": [], "val": [], "seconds": 0.0, "tokens": 0, "dropped_tokens": 0,
                        "routed_tokens": 0}
    if ckpt.exists() and not fresh:
        state = restore(ckpt, model, optimizer)
        step, history = state["step"], state["history"]
        print(json.dumps({"event": "resume", "step": step}), flush=True)
    counts = model.parameter_counts()
    print(json.dumps({"event": "start", "parameters": counts, "corpus": corpus.info}), flush=True)

    tokens_per_step = cfg["batch_size"] * cfg["seq_len"]
    interval = Interval(tokens_per_step)
    interval_load = np.zeros((mc.num_hidden_layers, mc.num_experts), dtype=np.int64)
    last = cfg["steps"] if stop_at is None else min(stop_at, cfg["steps"])
    while step < last:
        ids, targets = batch_at(corpus, cfg, step, optimizer)
        loss, ce, stats = model.loss(ids, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        optimizer.step()
        step += 1
        interval.add(ce)
        for layer, s in enumerate(stats):
            interval_load[layer] += np.bincount(s.choice.numpy(), minlength=mc.num_experts)
        count_routing(history, stats)
        history["tokens"] += tokens_per_step

        if step % cfg["log_every"] == 0 or step == cfg["steps"]:
            share = interval_load / interval_load.sum(axis=1, keepdims=True)
            interval.log(history, {"step": step}, learning_rate(step, cfg), {
                "drop_fraction": round(history["dropped_tokens"] / max(1, history["routed_tokens"]), 4),
                "expert_share": [[round(x, 3) for x in layer] for layer in share.tolist()]})
            interval_load[:] = 0
        if step % cfg["eval_every"] == 0 or step == cfg["steps"]:
            record_eval(history, interval, lambda: evaluate(model, windows, mc.num_experts) | {"step": step})
        if step % cfg["checkpoint_every"] == 0 or step in (cfg["steps"], last):
            save_checkpoint(ckpt, model, optimizer, step, history)

    summary = {"config": {k: (v.to_dict() if isinstance(v, ModelConfig) else v) for k, v in cfg.items()},
               "parameters": counts, "corpus": corpus.info, "history": history}
    if export and step == cfg["steps"]:
        from .export import calibration_text, export_package, validation_record
        export_package(model, summary, REPO / cfg["export_dir"], validation_record(windows, cfg["seq_len"]),
                       calibration_text(corpus))
    return {"model": model, "summary": summary}


def main(argv: list[str] | None = None) -> int:
    return run_cli(__doc__, train, argv, "training/configs/*.json", REPO / "training/configs/switchyard-moe.json")


if __name__ == "__main__":
    sys.exit(main())
