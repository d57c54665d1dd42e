"""Train a Switch-MoE model whose expert FFNs are sparse from initialisation, at a fixed density, and export a
package that stores the experts as sparse-bitmask.  Run with Debian's Python:

    /usr/bin/python3 -m training.sparse_train --config training/configs/sparse-proxy-rigl.json [--fresh]

The config is train.py's plus a "sparse" block:
  method        "dense" (no masks: the baseline), "static" (a random mask, never changed), "set" (Mocanu et al.
                2018: drop the smallest magnitudes, regrow at random) or "rigl" (Evci et al. 2020: drop the smallest
                magnitudes, regrow where the dense gradient is largest)
  density       fraction of each expert matrix kept (uniform per matrix; trunk and router stay dense)
  alpha         initial update fraction α of the cosine schedule f(t) = α/2 · (1 + cos(π t / T_end))
  delta_t       steps between mask updates (ΔT)
  t_end_fraction  T_end as a fraction of the steps (RigL: 0.75); the mask is frozen afterwards
  seed          seed of the masks and of SET's regrowth
  mask_from     (static only) a masks file saved by another run, e.g. a lottery ticket's final_masks.pt
  init_seed     seed of the weight initialisation (default: the run's seed, which also orders the data)
A mask update happens after the optimiser step of every ΔT-th step before T_end: the dense gradient of that step's
batch (taken before the gradients are masked) ranks RigL's candidates; dropped and grown weights lose their Adam
moments and grown weights start at 0.0. Resumes from the run folder's checkpoint (masks included) unless --fresh.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from .cli import run_cli
from .data import build_corpus
from .loop import Interval, batch_at, count_routing, learning_rate, record_eval, restore
from .model import ModelConfig, SwitchOlmoe
from .sparse_package import write_package
from .sparsity import (apply_masks, density, is_expert_matrix, is_update_step, mask_gradients, random_mask,
                       reset_moments, rigl_update, set_update, update_fraction)
from .train import REPO, evaluate, load_config, make_optimizer

METHODS = ("dense", "static", "set", "rigl")


def sparse_settings(cfg: dict, path: Path) -> dict:
    s = dict(cfg.get("sparse") or {})
    method = s.get("method")
    if method not in METHODS:
        raise SystemExit(f"{path}: sparse.method is {method!r}; use one of {', '.join(METHODS)}")
    if s.get("mask_from") and method != "static":
        raise SystemExit(f"{path}: sparse.mask_from needs method \"static\" (a given mask is never updated)")
    if method != "dense" and not s.get("mask_from") and not 0 < float(s.get("density", 0)) < 1:
        raise SystemExit(f"{path}: sparse.density must be in (0, 1) for method {method}, e.g. 0.1")
    s.setdefault("alpha", 0.3)
    s.setdefault("delta_t", 100)
    s.setdefault("t_end_fraction", 0.75)
    s.setdefault("seed", cfg["seed"])
    return s


def initial_masks(model: SwitchOlmoe, s: dict) -> dict[str, torch.Tensor]:
    """Random masks at the configured density, or (static with "mask_from") the masks saved by another run, such
    as a lottery ticket's final_masks.pt for its fresh-initialisation control."""
    if s["method"] == "dense":
        return {}
    if s.get("mask_from"):
        path = REPO / s["mask_from"]
        if not path.is_file():
            raise SystemExit(f"{path} (sparse.mask_from) is missing: run the lottery config that writes it first "
                             "(/usr/bin/python3 -m training.lottery --config training/configs/lottery-proxy-ticket.json)")
        masks = torch.load(path)
        shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if is_expert_matrix(n)}
        if {n: tuple(m.shape) for n, m in masks.items()} != shapes:
            raise SystemExit(f"{path}: its masks do not fit this model's expert matrices; use the same model block")
        return masks
    g = torch.Generator().manual_seed(s["seed"])
    return {n: random_mask(tuple(p.shape), s["density"], g)
            for n, p in model.named_parameters() if is_expert_matrix(n)}


def update_masks(model, optimizer, masks: dict[str, torch.Tensor], dense_grads: dict[str, torch.Tensor],
                 s: dict, step: int, fraction: float) -> int:
    """SET or RigL update of every masked matrix; returns how many weights were replaced in all."""
    params = dict(model.named_parameters())
    g = torch.Generator().manual_seed(s["seed"] * 1_000_003 + step)  # depends only on (seed, step): resumable
    replaced = 0
    with torch.no_grad():
        for name in sorted(masks):
            p, mask = params[name], masks[name]
            if s["method"] == "set":
                new_w, new_mask, k = set_update(p.detach(), mask, fraction, g)
            else:
                new_w, new_mask, k = rigl_update(p.detach(), mask, dense_grads[name], fraction)
            changed = (new_mask != mask) | ((new_w != p.detach()) & new_mask)
            p.copy_(new_w)
            reset_moments(optimizer.state.get(p, {}), changed)
            masks[name] = new_mask
            replaced += k
    return replaced


def save_checkpoint(path: Path, model, optimizer, masks, step: int, history: dict):
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "masks": masks, "step": step,
                "history": history}, tmp)
    os.replace(tmp, path)


def sparse_train(config_path: Path, fresh: bool = False, export: bool = True, stop_at: int | None = None,
                 run_dir: str | None = None) -> dict:
    if not Path(config_path).is_file():
        raise SystemExit(f"config {config_path} not found; see training/configs/sparse-*.json")
    cfg = load_config(config_path)
    if run_dir is not None:
        cfg["run_dir"] = run_dir
    s = sparse_settings(cfg, config_path)
    mc: ModelConfig = cfg["model"]
    torch.manual_seed(s.get("init_seed", cfg["seed"]))  # init_seed: another initialisation, same data order
    torch.set_num_threads(cfg.get("threads", 1))
    corpus = build_corpus(REPO / "node_modules", Path(cfg["fortunes_dir"]), cfg["source_weights"],
                          cfg.get("max_bytes_per_source"))
    windows = corpus.val_windows(cfg["seq_len"], cfg["val_windows_per_source"])
    model = SwitchOlmoe(mc)
    masks = initial_masks(model, s)
    params = dict(model.named_parameters())
    apply_masks(params, masks)
    optimizer = make_optimizer(model, cfg)
    out_dir = REPO / cfg["run_dir"]
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = out_dir / "checkpoint.pt"
    step, history = 0, {"train": [], "val": [], "updates": [], "seconds": 0.0, "tokens": 0,
                        "dropped_tokens": 0, "routed_tokens": 0}
    if ckpt.exists() and not fresh:
        state = restore(ckpt, model, optimizer)
        masks, step, history = state["masks"], state["step"], state["history"]
        print(json.dumps({"event": "resume", "step": step}), flush=True)
    t_end = int(s["t_end_fraction"] * cfg["steps"])
    print(json.dumps({"event": "start", "method": s["method"], "expert_density": round(density(masks), 6),
                      "parameters": model.parameter_counts(), "t_end": t_end}), flush=True)

    tokens_per_step = cfg["batch_size"] * cfg["seq_len"]
    interval = Interval(tokens_per_step)
    last = cfg["steps"] if stop_at is None else min(stop_at, cfg["steps"])
    while step < last:
        ids, targets = batch_at(corpus, cfg, step, optimizer)
        loss, ce, stats = model.loss(ids, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        updating = s["method"] in ("set", "rigl") and is_update_step(step + 1, s["delta_t"], t_end)
        dense_grads = {n: params[n].grad.detach().clone() if params[n].grad is not None
                       else torch.zeros_like(params[n]) for n in masks} if updating and s["method"] == "rigl" else {}
        mask_gradients(params, masks)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        optimizer.step()
        apply_masks(params, masks)
        step += 1
        if updating:
            before = density(masks)
            fraction = update_fraction(step, s["alpha"], t_end)
            replaced = update_masks(model, optimizer, masks, dense_grads, s, step, fraction)
            if abs(density(masks) - before) > 0:
                raise RuntimeError(f"step {step}: density changed from {before} to {density(masks)}")
            history["updates"].append({"step": step, "fraction": round(fraction, 5), "replaced": replaced})
        interval.add(ce)
        history["tokens"] += tokens_per_step
        count_routing(history, stats)
        if step % cfg["log_every"] == 0 or step == cfg["steps"]:
            interval.log(history, {"step": step}, learning_rate(step, cfg), {"expert_density": round(density(masks), 6)})
        if step % cfg["eval_every"] == 0 or step == cfg["steps"]:
            record_eval(history, interval, lambda: {"step": step, "val_bpb": evaluate(model, windows, mc.num_experts)["val_bpb"]})
        if step % cfg["checkpoint_every"] == 0 or step in (cfg["steps"], last):
            save_checkpoint(ckpt, model, optimizer, masks, step, history)

    record = None
    if export and step == cfg["steps"]:
        from .export import calibration_text, export_package, hf_config, validation_record
        summary = {"config": {k: (v.to_dict() if isinstance(v, ModelConfig) else v) for k, v in cfg.items()},
                   "parameters": model.parameter_counts(), "corpus": corpus.info, "history": history}
        summary["config"]["name"] = cfg["name"]
        out = REPO / cfg["export_dir"]
        export_package(model, summary, out, validation_record(windows, cfg["seq_len"]), calibration_text(corpus))
        record = {"method": s["method"], "expert_density": round(density(masks), 6), "sparse": s,
                  "command": f"/usr/bin/python3 -m training.sparse_train --config training/configs/{cfg['name']}.json",
                  "steps": cfg["steps"], "tokens": history["tokens"], "seed": cfg["seed"],
                  "training_seconds": round(history["seconds"], 1),
                  "trainer_val_bpb": history["val"][-1]["val_bpb"] if history["val"] else None,
                  "mask_updates": len(history["updates"])}
        write_package(model, masks, hf_config(mc), out, "switchyard_sparse_training", record)
        training = json.loads((out / "training.json").read_text())
        training["command"] = record["command"]  # export_package writes train.py's command
        (out / "training.json").write_text(json.dumps(training, indent=1) + "\n")
    return {"model": model, "masks": masks, "history": history, "record": record}


def main(argv: list[str] | None = None) -> int:
    return run_cli(__doc__, sparse_train, argv, "training/configs/sparse-*.json")


if __name__ == "__main__":
    sys.exit(main())
