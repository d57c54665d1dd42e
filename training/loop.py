"""The pieces of a training run that every trainer shares (train, finetune, sparse_train, lottery, distill): resuming
from a checkpoint, the learning-rate schedule, the step's batch, routing counts, the interval log line and evaluation."""
from __future__ import annotations

import json
import math
import time
from typing import Callable

import numpy as np
import torch


def learning_rate(step: int, cfg: dict) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    peak, warmup, total = cfg["lr"], cfg["warmup_steps"], cfg["steps"]
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def restore(ckpt, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The checkpoint's state, with the model's and the optimizer's state loaded from it."""
    state = torch.load(ckpt)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return state


def batch_at(corpus, cfg: dict, step: int, optimizer: torch.optim.Optimizer) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's (ids, targets) and the optimizer's learning rate set for it. The batch depends only on (seed, step),
    so a resumed run sees exactly the batches it would have."""
    rng = np.random.default_rng([cfg["seed"], step])
    ids, targets = (torch.from_numpy(np.ascontiguousarray(a)) for a in corpus.batch(rng, cfg["batch_size"], cfg["seq_len"]))
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(step, cfg)
    return ids, targets


def count_routing(history: dict, stats) -> None:
    """Adds the step's routed and capacity-dropped token choices (one RouterStats per layer) to the history."""
    for layer_stats in stats:
        history["dropped_tokens"] += layer_stats.dropped
        history["routed_tokens"] += layer_stats.choice.numel()


class Interval:
    """The losses since the last log line and the training time they took (evaluation time left out)."""

    def __init__(self, tokens_per_step: int):
        self.tokens_per_step = tokens_per_step
        self.reset()

    def reset(self) -> None:
        self.start, self.ce, self.n, self.terms = time.time(), 0.0, 0, {}

    def add(self, ce, **terms) -> None:
        """One step's cross-entropy (nats per byte) and any other loss terms to average (e.g. kd)."""
        self.ce += float(ce)
        for name, value in terms.items():
            self.terms[name] = self.terms.get(name, 0.0) + float(value)
        self.n += 1

    def exclude(self, seconds: float) -> None:
        """Time spent on something else (evaluation) is not training time."""
        self.start += seconds

    def log(self, history: dict, head: dict, lr: float | None = None, tail: dict | None = None) -> dict:
        """Appends, prints and returns the interval's row — head fields, loss, bpb, the other terms' means, lr,
        tokens_per_s, tail fields — adds its time to history["seconds"] and starts the next interval."""
        elapsed = time.time() - self.start
        history["seconds"] += elapsed
        row = {**head, "loss": round(self.ce / self.n, 4), "bpb": round(self.ce / self.n / math.log(2), 4),
               **{name: round(total / self.n, 4) for name, total in self.terms.items()},
               **({} if lr is None else {"lr": round(lr, 6)}),
               "tokens_per_s": round(self.n * self.tokens_per_step / elapsed, 1), **(tail or {})}
        history["train"].append(row)
        print(json.dumps(row), flush=True)
        self.reset()
        return row


def record_eval(history: dict, interval: Interval, evaluate_now: Callable[[], dict]) -> None:
    """Runs an evaluation, appends its result to history["val"] and prints it; its time is left out of the interval."""
    started = time.time()
    result = evaluate_now()
    history["val"].append(result)
    print(json.dumps({"event": "eval", **result}), flush=True)
    interval.exclude(time.time() - started)
