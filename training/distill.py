"""Knowledge distillation (Hinton et al. 2015) of a model package into a smaller Switch-MoE student, and export of
the student as a servable package.  Run with Debian's Python:

    /usr/bin/python3 -m training.distill --config training/configs/distill-proxy.json [--fresh]

The config is train.py's (the `model` block is the student) plus a "distill" block: teacher (a package folder,
e.g. models/switchyard-moe), temperature T and kd_weight w. The loss per step is
    w · T² · KL(softmax(teacher/T) ‖ softmax(student/T)) + (1 − w) · next-byte cross-entropy
plus the student's Switch load-balancing and z losses. The teacher runs in eval mode without a capacity limit.
The same student trained without the teacher for the same tokens is train.py's loop with the same seed, model and
data (training/configs/sparse-proxy-dense.json for distill-proxy.json). Resumes from the run folder's checkpoint.
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
from .sparse_package import read_package, write_package
from .sparsity import distillation_loss
from .train import REPO, evaluate, load_config, make_optimizer


def save_checkpoint(path: Path, model, optimizer, step: int, history: dict):
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "history": history}, tmp)
    os.replace(tmp, path)


def student_loss(student: SwitchOlmoe, teacher_logits: torch.Tensor, ids, targets, temperature: float,
                 kd_weight: float):
    logits, stats = student(ids, student.cfg.capacity_factor)
    total, kd, ce = distillation_loss(logits, teacher_logits, targets, temperature, kd_weight)
    aux = sum(s.aux_loss for s in stats)
    z = sum(s.z_loss for s in stats)
    return total + student.cfg.router_aux_loss_coef * aux + student.cfg.router_z_loss_coef * z, kd, ce, stats


def distill(config_path: Path, fresh: bool = False, export: bool = True, stop_at: int | None = None,
            run_dir: str | None = None) -> dict:
    if not Path(config_path).is_file():
        raise SystemExit(f"config {config_path} not found; see training/configs/distill-*.json")
    cfg = load_config(Path(config_path))
    if run_dir is not None:
        cfg["run_dir"] = run_dir
    d = cfg.get("distill")
    if not d or not {"teacher", "temperature", "kd_weight"} <= set(d):
        raise SystemExit(f"{config_path}: needs a \"distill\" block with teacher, temperature and kd_weight")
    mc: ModelConfig = cfg["model"]
    torch.manual_seed(cfg["seed"])
    torch.set_num_threads(cfg.get("threads", 1))
    teacher, _, _ = read_package(REPO / d["teacher"])
    teacher.eval()
    if teacher.cfg.vocab_size != mc.vocab_size or teacher.cfg.max_position_embeddings < cfg["seq_len"]:
        raise SystemExit(f"{config_path}: the student's vocabulary ({mc.vocab_size}) must equal the teacher's "
                         f"({teacher.cfg.vocab_size}) and seq_len must fit the teacher's context")
    for p in teacher.parameters():
        p.requires_grad_(False)
    corpus = build_corpus(REPO / "node_modules", Path(cfg["fortunes_dir"]), cfg["source_weights"],
                          cfg.get("max_bytes_per_source"))
    windows = corpus.val_windows(cfg["seq_len"], cfg["val_windows_per_source"])
    torch.manual_seed(cfg["seed"])  # the student starts exactly as train.py / sparse_train.py would start it
    model = SwitchOlmoe(mc)
    optimizer = make_optimizer(model, cfg)
    out_dir = REPO / cfg["run_dir"]
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = out_dir / "checkpoint.pt"
    step, history = 0, {"train": [], "val": [], "seconds": 0.0, "tokens": 0, "dropped_tokens": 0,
                        "routed_tokens": 0}
    if ckpt.exists() and not fresh:
        state = restore(ckpt, model, optimizer)
        step, history = state["step"], state["history"]
        print(json.dumps({"event": "resume", "step": step}), flush=True)
    print(json.dumps({"event": "start", "student": model.parameter_counts(),
                      "teacher": teacher.parameter_counts(), "teacher_package": d["teacher"]}), flush=True)
    tokens_per_step = cfg["batch_size"] * cfg["seq_len"]
    interval = Interval(tokens_per_step)
    last = cfg["steps"] if stop_at is None else min(stop_at, cfg["steps"])
    while step < last:
        ids, targets = batch_at(corpus, cfg, step, optimizer)
        with torch.no_grad():
            teacher_logits, _ = teacher(ids, capacity_factor=None)
        loss, kd, ce, stats = student_loss(model, teacher_logits, ids, targets, d["temperature"], d["kd_weight"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        optimizer.step()
        step += 1
        interval.add(ce, kd=kd)
        history["tokens"] += tokens_per_step
        count_routing(history, stats)
        if step % cfg["log_every"] == 0 or step == cfg["steps"]:
            interval.log(history, {"step": step}, learning_rate(step, cfg))
        if step % cfg["eval_every"] == 0 or step == cfg["steps"]:
            record_eval(history, interval, lambda: {"step": step, "val_bpb": evaluate(model, windows, mc.num_experts)["val_bpb"]})
        if step % cfg["checkpoint_every"] == 0 or step in (cfg["steps"], last):
            save_checkpoint(ckpt, model, optimizer, step, history)

    record = None
    if export and step == cfg["steps"]:
        from .export import calibration_text, export_package, hf_config, validation_record
        out = REPO / cfg["export_dir"]
        summary = {"config": {k: (v.to_dict() if isinstance(v, ModelConfig) else v) for k, v in cfg.items()},
                   "parameters": model.parameter_counts(), "corpus": corpus.info, "history": history}
        export_package(model, summary, out, validation_record(windows, cfg["seq_len"]), calibration_text(corpus))
        record = {"method": "knowledge distillation", **d,
                  "command": f"/usr/bin/python3 -m training.distill --config training/configs/{cfg['name']}.json",
                  "steps": cfg["steps"], "tokens": history["tokens"], "seed": cfg["seed"],
                  "training_seconds": round(history["seconds"], 1),
                  "trainer_val_bpb": history["val"][-1]["val_bpb"] if history["val"] else None}
        write_package(model, {}, hf_config(mc), out, "switchyard_distillation", record)
        training = json.loads((out / "training.json").read_text())
        training["command"] = record["command"]
        (out / "training.json").write_text(json.dumps(training, indent=1) + "\n")
    return {"model": model, "history": history, "record": record}


def main(argv: list[str] | None = None) -> int:
    return run_cli(__doc__, distill, argv, "training/configs/distill-*.json")


if __name__ == "__main__":
    sys.exit(main())
