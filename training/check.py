"""Re-read an exported package and recompute its golden file:  /usr/bin/python3 -m training.check models/<name>

Loads model.safetensors into a fresh model (every tensor name and shape must match; sparse-bitmask experts
decompressed), recomputes golden.json and compares logits (max abs ≤ 1e-4), greedy tokens and router choices. Exits non-zero on any mismatch.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .export import golden
from .model import SwitchOlmoe
from .sparse_package import read_package


def model_from_package(folder: Path) -> SwitchOlmoe:
    """The package's weights in a fresh model (every tensor name and shape must match); experts stored as
    sparse-bitmask (switchyard prune, training.finetune and the other sparsity tools) are decompressed."""
    return read_package(folder)[0]


def compare(expected: dict, actual: dict, tolerance: float = 1e-4) -> list[str]:
    problems = []
    for want, got in zip(expected["cases"], actual["cases"], strict=True):
        name = repr(want["prompt"])
        diff = max(abs(a - b) for a, b in zip(want["last_logits"], got["last_logits"], strict=True))
        if diff > tolerance:
            problems.append(f"{name}: logits differ by {diff:.2e} (> {tolerance:g})")
        if want["greedy_next_tokens"] != got["greedy_next_tokens"]:
            problems.append(f"{name}: greedy tokens {got['greedy_next_tokens']} != {want['greedy_next_tokens']}")
        for lw, lg in zip(want["router"], got["router"], strict=True):
            if lw["expert"] != lg["expert"]:
                problems.append(f"{name}: layer {lw['layer']} router choices differ")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    folder = Path(argv[0])
    expected = json.loads((folder / "golden.json").read_text())
    problems = compare(expected, golden(model_from_package(folder)))
    for p in problems:
        print("MISMATCH", p)
    if not problems:
        print(f"ok: {folder} matches golden.json ({len(expected['cases'])} prompts, logits within 1e-4)")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
