"""Lottery tickets in the expert FFNs: iterative magnitude pruning with rewinding to an early step, then a
servable package of the ticket.  Run with Debian's Python:

    /usr/bin/python3 -m training.lottery --config training/configs/lottery-proxy-ticket.json [--fresh]

The config is train.py's plus a "lottery" block: rounds R, final_sparsity (of every expert matrix), rewind_step k.
Round 0 trains the dense model for `steps` (T) steps and keeps its weights after k steps (θ_k). Each round r = 1..R
then prunes each expert matrix by magnitude to sparsity 1 − (1 − final)^(r/R) among the weights still present,
rewinds every parameter to θ_k (Frankle et al. 2020: rewinding to an early step, not to initialisation), starts a
fresh optimiser and trains steps k..T again with the mask fixed, seeing the same batches at the same steps. The
last round's model is the ticket; its mask is saved as `final_masks.pt` in the run folder for the control
(training/configs/lottery-proxy-control.json: the same mask, fresh initialisation, trained from step 0 with
training.sparse_train). Checkpoints hold the round, step, masks and θ_k, so a run resumes mid-round.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from .cli import run_cli
from .data import build_corpus
from .finetune import train_step
from .loop import Interval, batch_at, restore
from .model import ModelConfig, SwitchOlmoe
from .sparse_package import write_package
from .sparsity import density, imp_schedule, is_expert_matrix, magnitude_mask, rewind
from .train import REPO, evaluate, load_config, make_optimizer


def save_checkpoint(path: Path, state: dict):
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def lottery(config_path: Path, fresh: bool = False, export: bool = True, run_dir: str | None = None) -> dict:
    if not Path(config_path).is_file():
        raise SystemExit(f"config {config_path} not found; see training/configs/lottery-*.json")
    cfg = load_config(Path(config_path))
    if run_dir is not None:
        cfg["run_dir"] = run_dir
    lt = cfg.get("lottery")
    if not lt or not {"rounds", "final_sparsity", "rewind_step"} <= set(lt):
        raise SystemExit(f"{config_path}: needs a \"lottery\" block with rounds, final_sparsity and rewind_step")
    rounds, k, total = int(lt["rounds"]), int(lt["rewind_step"]), cfg["steps"]
    if not 0 <= k < total:
        raise SystemExit(f"{config_path}: lottery.rewind_step {k} must be in [0, steps={total})")
    targets = imp_schedule(float(lt["final_sparsity"]), rounds)
    mc: ModelConfig = cfg["model"]
    torch.manual_seed(cfg["seed"])
    torch.set_num_threads(cfg.get("threads", 1))
    corpus = build_corpus(REPO / "node_modules", Path(cfg["fortunes_dir"]), cfg["source_weights"],
                          cfg.get("max_bytes_per_source"))
    windows = corpus.val_windows(cfg["seq_len"], cfg["val_windows_per_source"])
    model = SwitchOlmoe(mc)
    params = dict(model.named_parameters())
    optimizer = make_optimizer(model, cfg)
    out_dir = REPO / cfg["run_dir"]
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = out_dir / "checkpoint.pt"
    state = {"round": 0, "step": 0, "masks": {}, "rewind": None,
             "history": {"rounds": [], "train": [], "tokens": 0, "seconds": 0.0}}
    if k == 0:
        state["rewind"] = {n: p.detach().clone() for n, p in params.items()}
    if ckpt.exists() and not fresh:
        state = restore(ckpt, model, optimizer)
        print(json.dumps({"event": "resume", "round": state["round"], "step": state["step"]}), flush=True)
    history = state["history"]
    tokens_per_step = cfg["batch_size"] * cfg["seq_len"]

    def checkpoint():
        save_checkpoint(ckpt, {**state, "model": model.state_dict(), "optimizer": optimizer.state_dict()})

    while state["round"] <= rounds:
        r, masks = state["round"], state["masks"]
        print(json.dumps({"event": "round", "round": r, "from_step": state["step"],
                          "expert_density": round(density(masks), 6)}), flush=True)
        interval = Interval(tokens_per_step)
        while state["step"] < total:
            step = state["step"]
            ids, targets_ = batch_at(corpus, cfg, step, optimizer)
            _, ce, _ = train_step(model, optimizer, masks, ids, targets_, cfg["grad_clip"])
            state["step"] = step = step + 1
            history["tokens"] += tokens_per_step
            interval.add(ce)
            if r == 0 and step == k:
                state["rewind"] = {n: p.detach().clone() for n, p in params.items()}
            if step % cfg["log_every"] == 0 or step == total:
                interval.log(history, {"round": r, "step": step})
            if step % cfg["checkpoint_every"] == 0:
                checkpoint()
        result = {"round": r, "expert_density": round(density(masks), 6),
                  "val_bpb": evaluate(model, windows, mc.num_experts)["val_bpb"],
                  "tokens_so_far": history["tokens"], "seconds_so_far": round(history["seconds"], 1)}
        history["rounds"].append(result)
        print(json.dumps({"event": "eval", **result}), flush=True)
        if r == rounds:
            state["round"] = r + 1
            checkpoint()
            break
        # Prune to this round's target among the surviving weights, rewind to θ_k, fresh optimiser.
        state["masks"] = {n: magnitude_mask(p.detach(), targets[r], masks.get(n))
                          for n, p in params.items() if is_expert_matrix(n)}
        rewind(params, state["rewind"], state["masks"])
        optimizer = make_optimizer(model, cfg)
        state["round"], state["step"] = r + 1, k
        checkpoint()

    masks = state["masks"]
    torch.save(masks, out_dir / "final_masks.pt")
    record = None
    if export:
        from .export import calibration_text, export_package, hf_config, validation_record
        out = REPO / cfg["export_dir"]
        summary = {"config": {key: (v.to_dict() if isinstance(v, ModelConfig) else v) for key, v in cfg.items()},
                   "parameters": model.parameter_counts(), "corpus": corpus.info,
                   "history": {"train": history["train"], "val": history["rounds"], "seconds": history["seconds"],
                               "tokens": history["tokens"], "dropped_tokens": 0, "routed_tokens": 0}}
        export_package(model, summary, out, validation_record(windows, cfg["seq_len"]), calibration_text(corpus))
        record = {"method": "lottery ticket (IMP with rewinding)", "rounds": rounds, "rewind_step": k,
                  "round_sparsity": [round(t, 6) for t in targets], "expert_density": round(density(masks), 6),
                  "command": f"/usr/bin/python3 -m training.lottery --config training/configs/{cfg['name']}.json",
                  "steps_per_round": total, "tokens_all_rounds": history["tokens"],
                  "tokens_final_round": (total - k) * tokens_per_step, "seed": cfg["seed"],
                  "training_seconds_all_rounds": round(history["seconds"], 1), "rounds_val_bpb": history["rounds"]}
        write_package(model, masks, hf_config(mc), out, "switchyard_lottery", record)
        training = json.loads((out / "training.json").read_text())
        training["command"] = record["command"]
        (out / "training.json").write_text(json.dumps(training, indent=1) + "\n")
    return {"model": model, "masks": masks, "history": history, "record": record, "rewind": state["rewind"]}


def main(argv: list[str] | None = None) -> int:
    return run_cli(__doc__, lottery, argv, "training/configs/lottery-*.json")


if __name__ == "__main__":
    sys.exit(main())
