"""Fine-tune a pruned package with its masks fixed, and write a servable package.  Run with Debian's Python:

    /usr/bin/python3 -m training.finetune --config training/configs/finetune-smoke.json [--fresh]

The package named by the config's `package` (e.g. the --out of `switchyard prune`) is read back to dense weights;
its expert masks are the positions of its non-zero expert weights. Every step masks the expert gradients and, after
the optimiser step, zeroes the pruned weights again, so pruned weights stay exactly 0.0 and the exported package
stores each pruned matrix as sparse-bitmask with exactly the input mask. Resumes from the run folder's checkpoint
unless --fresh (data depends only on seed and step, as in train.py); writes the package to `export_dir` when the
last step is done.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from .cli import run_cli
from .data import build_corpus
from .loop import Interval, batch_at, learning_rate, record_eval, restore
from .sparse_package import read_package, write_package
from .sparsity import apply_masks, density, mask_gradients
from .train import REPO, evaluate, make_optimizer, save_checkpoint

REQUIRED = ("name", "package", "seed", "fortunes_dir", "source_weights", "batch_size", "seq_len", "steps", "lr",
            "warmup_steps", "weight_decay", "grad_clip", "log_every", "checkpoint_every", "run_dir", "export_dir")


def load_config(path: Path) -> dict:
    if not Path(path).is_file():
        raise SystemExit(f"config {path} not found; pass --config training/configs/<name>.json "
                         "(see training/configs/finetune-*.json)")
    cfg = json.loads(Path(path).read_text())
    missing = [k for k in REQUIRED if k not in cfg]
    if missing:
        raise SystemExit(f"{path}: missing {', '.join(missing)} (see training/configs/finetune-smoke.json)")
    return cfg


def validation_windows(package: Path, per_source: int | None) -> list[tuple[str, np.ndarray]]:
    """The package's own held-out windows (validation.json, what `switchyard eval` scores), the first `per_source`
    of each source (all when None)."""
    file = package / "validation.json"
    if not file.is_file():
        raise SystemExit(f"{file} is missing; the package must carry the trainer's validation.json "
                         "(switchyard prune copies it)")
    taken: dict[str, int] = {}
    out = []
    for w in json.loads(file.read_text())["windows"]:
        if per_source is None or taken.get(w["source"], 0) < per_source:
            taken[w["source"]] = taken.get(w["source"], 0) + 1
            out.append((w["source"], np.array(w["tokens"], dtype=np.int64)))
    return out


def relative(path: Path) -> str:
    """`path` relative to the repository when inside it (for records), else as given."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else str(path)


def masks_hold(model, masks: dict[str, torch.Tensor]) -> bool:
    params = dict(model.named_parameters())
    return all(not bool((params[n].detach()[~m] != 0).any()) for n, m in masks.items())


def train_step(model, optimizer, masks: dict[str, torch.Tensor], ids, targets, grad_clip: float):
    """One optimiser step with fixed masks: gradients of pruned weights are zeroed before clipping and the step,
    and the pruned weights are zeroed again afterwards (weight decay or numerical noise cannot revive them)."""
    params = dict(model.named_parameters())
    loss, ce, stats = model.loss(ids, targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    mask_gradients(params, masks)
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    apply_masks(params, masks)
    return loss, ce, stats


def finetune(config_path: Path, fresh: bool = False, export: bool = True, stop_at: int | None = None,
             run_dir: str | None = None) -> dict:
    cfg = load_config(config_path)
    if run_dir is not None:
        cfg["run_dir"] = run_dir
    torch.manual_seed(cfg["seed"])
    torch.set_num_threads(cfg.get("threads", 1))
    package = REPO / cfg["package"]
    if not package.is_dir():
        how = f"create it first: {cfg['prepare']}" if "prepare" in cfg else \
            "create it with `node bin/switchyard.mjs prune --model models/switchyard-moe --out DIR ...` and set package"
        raise SystemExit(f"{package} does not exist; {how}")
    model, hf, masks = read_package(package)
    if not masks:
        raise SystemExit(f"{package}: no expert matrices found")
    mc = model.cfg
    input_masks = {n: m.clone() for n, m in masks.items()}
    corpus = build_corpus(REPO / "node_modules", Path(cfg["fortunes_dir"]), cfg["source_weights"],
                          cfg.get("max_bytes_per_source"))
    windows = validation_windows(package, cfg.get("val_windows_per_source"))
    optimizer = make_optimizer(model, cfg)
    out_dir = REPO / cfg["run_dir"]
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = out_dir / "checkpoint.pt"
    step, history = 0, {"train": [], "val": [], "seconds": 0.0, "tokens": 0}
    if ckpt.exists() and not fresh:
        state = restore(ckpt, model, optimizer)
        step, history = state["step"], state["history"]
        print(json.dumps({"event": "resume", "step": step}), flush=True)
    start_density = density(masks)
    print(json.dumps({"event": "start", "package": cfg["package"], "expert_density": round(start_density, 6),
                      "steps": cfg["steps"], "tokens_per_step": cfg["batch_size"] * cfg["seq_len"]}), flush=True)
    if step == 0 and cfg.get("eval_at_start", True):
        before = evaluate(model, windows, mc.num_experts)
        history["val_before"] = before["val_bpb"]
        print(json.dumps({"event": "eval", "step": 0, "val_bpb": before["val_bpb"]}), flush=True)

    tokens_per_step = cfg["batch_size"] * cfg["seq_len"]
    interval = Interval(tokens_per_step)
    last = cfg["steps"] if stop_at is None else min(stop_at, cfg["steps"])
    eval_every = cfg.get("eval_every", cfg["steps"])
    while step < last:
        ids, targets = batch_at(corpus, cfg, step, optimizer)
        _, ce, _ = train_step(model, optimizer, masks, ids, targets, cfg["grad_clip"])
        step += 1
        interval.add(ce)
        history["tokens"] += tokens_per_step
        if step % cfg["log_every"] == 0 or step == cfg["steps"]:
            interval.log(history, {"step": step}, learning_rate(step, cfg))
        if step % eval_every == 0 or step == cfg["steps"]:
            record_eval(history, interval, lambda: {"step": step, "val_bpb": evaluate(model, windows, mc.num_experts)["val_bpb"]})
        if step % cfg["checkpoint_every"] == 0 or step in (cfg["steps"], last):
            save_checkpoint(ckpt, model, optimizer, step, history)

    if not masks_hold(model, input_masks):
        raise RuntimeError("a pruned weight is no longer zero after fine-tuning; this is a bug in the mask upkeep")
    record = None
    if export and step == cfg["steps"]:
        record = {"method": "fine-tuning with fixed masks", "source_package": cfg["package"],
                  "command": f"/usr/bin/python3 -m training.finetune --config {relative(config_path)}",
                  "steps": cfg["steps"], "tokens": history["tokens"], "batch_size": cfg["batch_size"],
                  "seq_len": cfg["seq_len"], "lr": cfg["lr"], "seed": cfg["seed"],
                  "training_seconds": round(history["seconds"], 1), "expert_density": round(start_density, 6),
                  "trainer_val_bpb_before": history.get("val_before"),
                  "trainer_val_bpb_after": history["val"][-1]["val_bpb"] if history["val"] else None,
                  "trainer_val_windows": len(windows)}
        export_dir = REPO / cfg["export_dir"]
        write_package(model, masks, hf, export_dir, "switchyard_finetune", record, copy_from=package)
        (export_dir / "finetune.json").write_text(json.dumps({**record, "curves": history}, indent=1) + "\n")
    return {"model": model, "masks": masks, "history": history, "record": record}


def main(argv: list[str] | None = None) -> int:
    return run_cli(__doc__, finetune, argv, "training/configs/finetune-*.json")


if __name__ == "__main__":
    sys.exit(main())
