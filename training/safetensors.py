"""A small reader and writer for the safetensors format (F32 only), so the exporter needs no extra packages.

Layout: 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, the raw data.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import torch


def save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    blobs, offset = [], 0
    for name in sorted(tensors):
        array = tensors[name].detach().to(torch.float32).contiguous().numpy().astype("<f4", copy=False)
        blob = array.tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # keep the data 8-byte aligned, as the reference writer does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for blob in blobs:
            f.write(blob)


def load(path: Path) -> dict[str, torch.Tensor]:
    raw = Path(path).read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    base = 8 + length
    out = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        if spec["dtype"] != "F32":
            raise ValueError(f"{path}: tensor {name} has dtype {spec['dtype']}, only F32 is supported")
        start, end = spec["data_offsets"]
        array = np.frombuffer(raw, dtype="<f4", count=(end - start) // 4, offset=base + start)
        out[name] = torch.from_numpy(array.reshape(spec["shape"]).copy())
    return out
