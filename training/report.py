"""Markdown tables of the sparsity comparisons from what the run scripts recorded (no numbers of its own):

    /usr/bin/python3 -m training.report

Reads training/runs/finetune-suite.jsonl (training/finetune-suite.sh) and training/runs/arms.jsonl
(training/run-arm.sh); the last line per arm wins. Prints one table per technique for training/RESULTS.md.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .train import REPO


def latest(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            out[row["arm"]] = row
    return out


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def kernels(k: dict) -> str:
    return ", ".join(f"{name} ×{n}" for name, n in k.items())


def main() -> int:
    suite = latest(REPO / "training/runs/finetune-suite.jsonl")
    arms = latest(REPO / "training/runs/arms.jsonl")
    if suite:
        any_row = next(iter(suite.values()))
        print(f"Dense bundled model: {any_row['dense_val_bpb']:.4f} bits per byte, "
              f"{any_row['dense_decode_tok_s']:.1f} decode tok/s.\n")
        rows = [[arm, f"{r['expert_density']:.3f}", f"{r['before_val_bpb']:.4f}", f"{r['after_val_bpb']:.4f}",
                 f"{r['after_val_bpb'] - r['before_val_bpb']:+.4f}",
                 f"{100 * r['after_greedy_agreement']:.2f}" if r.get("after_greedy_agreement") is not None else "—",
                 r["tokens"], r["steps"], r["training_seconds"], r["last_invocation_wall_s"],
                 f"{r['after_decode_tok_s']:.1f}", kernels(r.get("after_kernels", {}))]
                for arm, r in sorted(suite.items())]
        print(table(["arm", "expert density", "bpb pruned", "bpb fine-tuned", "Δ bpb", "greedy agreement % (vs dense)",
                     "tokens", "steps", "train s", "wall s", "decode tok/s", "kernels"], rows))
        print()
    for title, prefix in (("sparse training", "sparse-proxy-"), ("lottery", "lottery-proxy-"),
                          ("distillation", "distill-proxy")):
        chosen = {a: r for a, r in arms.items() if a.startswith(prefix) or (prefix == "distill-proxy" and
                                                                           a == "sparse-proxy-dense")}
        if not chosen:
            continue
        print(f"### {title}\n")
        rows = [[arm, f"{r['expert_density']:.3f}", f"{r['val_bpb']:.4f}", r["tokens"], r["training_seconds"],
                 r["last_invocation_wall_s"], f"{r['decode_tok_s']:.1f}", kernels(r["kernels"])]
                for arm, r in sorted(chosen.items())]
        print(table(["arm", "expert density", "val bpb (switchyard eval)", "tokens", "train s", "wall s",
                     "decode tok/s", "kernels"], rows))
        ticket = arms.get("lottery-proxy-ticket")
        if prefix == "lottery-proxy-" and ticket:
            print("\nIMP rounds (trainer's evaluation on the same windows):\n")
            print(table(["round", "expert density", "val bpb", "tokens so far"],
                        [[x["round"], x["expert_density"], f"{x['val_bpb']:.4f}", x["tokens_so_far"]]
                         for x in ticket["record"]["rounds_val_bpb"]]))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
