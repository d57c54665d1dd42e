"""A small reader and writer for the safetensors format, so the exporter needs no extra packages.

Layout: 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, the raw data.
Dtypes: F32 (weights), U8 and I64 (the parts of compressed-tensors sparse-bitmask tensors: bitmask, shape,
row_offsets). Float tensors of any torch float dtype are written as F32.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import torch

# safetensors dtype -> little-endian numpy dtype
DTYPES = {"F32": "<f4", "U8": "u1", "I64": "<i8"}


def _stored(tensor: torch.Tensor) -> tuple[str, np.ndarray]:
    t = tensor.detach().contiguous()
    if t.dtype == torch.uint8:
        return "U8", t.numpy()
    if t.dtype == torch.int64:
        return "I64", t.numpy().astype("<i8", copy=False)
    if t.is_floating_point():
        return "F32", t.to(torch.float32).numpy().astype("<f4", copy=False)
    raise ValueError(f"cannot store a {t.dtype} tensor: supported are float (written as F32), uint8 and int64")


def save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    blobs, offset = [], 0
    for name in sorted(tensors):
        dtype, array = _stored(tensors[name])
        blob = array.tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(blob)]}
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
        if spec["dtype"] not in DTYPES:
            raise ValueError(f"{path}: tensor {name} has dtype {spec['dtype']}; supported: {', '.join(DTYPES)}")
        dtype = np.dtype(DTYPES[spec["dtype"]])
        start, end = spec["data_offsets"]
        array = np.frombuffer(raw, dtype=dtype, count=(end - start) // dtype.itemsize, offset=base + start)
        out[name] = torch.from_numpy(array.reshape(spec["shape"]).astype(dtype.newbyteorder("="), copy=True))
    return out
