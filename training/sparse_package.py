"""Reading and writing packages whose expert matrices are stored as compressed-tensors "sparse-bitmask" (the format
`switchyard prune` writes and the gateway serves; experts/pruning/bitmask.ts is the TypeScript side).

One matrix W [rows, cols] is stored as four tensors next to its name:
  NAME.compressed   F32 [nnz]              the stored values, row-major
  NAME.bitmask      U8  [rows, ceil(cols/8)] one bit per weight, little-endian bit order within each byte
  NAME.shape        I64 [2]                the dense shape
  NAME.row_offsets  I64 [rows]             index in .compressed where each row's values start
The trunk, the router and dense expert matrices are plain F32 tensors.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from . import safetensors
from .export import golden
from .model import ModelConfig, SwitchOlmoe
from .sparsity import density, is_expert_matrix

BITMASK_PARTS = ("compressed", "bitmask", "shape", "row_offsets")
COMPRESSED_TENSORS_VERSION = "0.9.1"  # the release whose config writer src/pruning/prune-package.ts follows
COPIED_FILES = ("tokenizer.json", "tokenizer_config.json", "validation.json", "calibration.txt", "training.json")


def pack_bitmask(weight: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """The four sparse-bitmask parts of `weight` [rows, cols] storing exactly the positions `mask` keeps (so the
    stored bitmask equals the mask even where a kept weight happens to be 0.0). Suffix -> tensor."""
    rows, cols = weight.shape
    m = mask.numpy().astype(bool)
    bits = np.packbits(m, axis=1, bitorder="little")  # [rows, ceil(cols/8)]
    counts = m.sum(axis=1)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return {"compressed": weight.detach().to(torch.float32)[mask].contiguous(),
            "bitmask": torch.from_numpy(bits.astype(np.uint8)),
            "shape": torch.tensor([rows, cols], dtype=torch.int64),
            "row_offsets": torch.from_numpy(offsets)}


def unpack_bitmask(compressed: torch.Tensor, bitmask: torch.Tensor, shape: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense weight [rows, cols] (float32) and its stored mask (bool) from sparse-bitmask parts."""
    rows, cols = (int(x) for x in shape)
    if tuple(bitmask.shape) != (rows, (cols + 7) // 8):
        raise ValueError(f"bitmask has shape {list(bitmask.shape)}, expected [{rows}, {(cols + 7) // 8}] "
                         f"for the dense shape [{rows}, {cols}]")
    mask = torch.from_numpy(np.unpackbits(bitmask.numpy(), axis=1, count=cols, bitorder="little").astype(bool))
    if int(mask.sum()) != compressed.numel():
        raise ValueError(f"bitmask marks {int(mask.sum())} weights but {compressed.numel()} are stored")
    dense = torch.zeros(rows, cols, dtype=torch.float32)
    dense[mask] = compressed.to(torch.float32)
    return dense, mask


def read_package(folder: Path) -> tuple[SwitchOlmoe, dict, dict[str, torch.Tensor]]:
    """A package as (model with dense weights, its config.json, masks of the expert matrices from their zeros).

    Experts stored as sparse-bitmask are decompressed; pruned weights are 0.0 in the model. Structured pruning
    (narrower experts) and dropped experts cannot be loaded into training/model.py and are refused."""
    folder = Path(folder)
    for name in ("config.json", "model.safetensors"):
        if not (folder / name).is_file():
            raise SystemExit(f"{folder}: {name} is missing; give a model package folder (e.g. models/switchyard-moe "
                             "or the --out of `switchyard prune`)")
    hf = json.loads((folder / "config.json").read_text())
    pruning = hf.get("switchyard_pruning") or {}
    if pruning.get("dropped_experts"):
        raise SystemExit(f"{folder}: experts were dropped (switchyard_pruning.dropped_experts); training needs every "
                         "expert: prune without --drop-experts")
    if pruning.get("structure") == "structured":
        raise SystemExit(f"{folder}: structured pruning stores narrower experts, which this trainer cannot load; "
                         "fine-tune an unstructured or N:M pruned package instead")
    cfg = ModelConfig(vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
                      intermediate_size=hf["intermediate_size"], num_hidden_layers=hf["num_hidden_layers"],
                      num_attention_heads=hf["num_attention_heads"], num_experts=hf["num_experts"],
                      max_position_embeddings=hf["max_position_embeddings"], rope_theta=hf["rope_theta"],
                      rms_norm_eps=hf["rms_norm_eps"], bos_token_id=hf["bos_token_id"],
                      eos_token_id=hf["eos_token_id"],
                      router_aux_loss_coef=hf.get("router_aux_loss_coef", ModelConfig.router_aux_loss_coef),
                      capacity_factor=(hf.get("switch") or {}).get("training_capacity_factor") or
                      ModelConfig.capacity_factor,
                      router_z_loss_coef=(hf.get("switch") or {}).get("router_z_loss_coef") or
                      ModelConfig.router_z_loss_coef)
    stored = safetensors.load(folder / "model.safetensors")
    weights: dict[str, torch.Tensor] = {}
    stored_masks: dict[str, torch.Tensor] = {}
    for name, tensor in stored.items():
        base, _, suffix = name.rpartition(".")
        if suffix in BITMASK_PARTS and is_expert_matrix(base):
            if base in weights:
                continue
            missing = [s for s in BITMASK_PARTS if f"{base}.{s}" not in stored]
            if missing:
                raise SystemExit(f"{folder}/model.safetensors: sparse-bitmask tensor {base} lacks "
                                 f"{', '.join(missing)}; re-run `switchyard prune`")
            try:
                weights[base], stored_masks[base] = unpack_bitmask(stored[f"{base}.compressed"],
                                                                   stored[f"{base}.bitmask"], stored[f"{base}.shape"])
            except ValueError as error:
                raise SystemExit(f"{folder}/model.safetensors: sparse-bitmask tensor {base}: {error}; "
                                 "re-run `switchyard prune`") from None
        else:
            weights[name] = tensor
    model = SwitchOlmoe(cfg)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as error:
        raise SystemExit(f"{folder}/model.safetensors does not match an OLMoE model of its config.json: {error}") \
            from None
    masks = {name: w != 0 for name, w in weights.items() if is_expert_matrix(name)}
    return model, hf, masks


def expert_storage(masks: dict[str, torch.Tensor]) -> dict[str, str]:
    """Per masked matrix, how it is written: sparse-bitmask if any weight is pruned, else dense."""
    return {name: "sparse-bitmask" if not bool(mask.all()) else "dense" for name, mask in masks.items()}


def write_package(model: SwitchOlmoe, masks: dict[str, torch.Tensor], hf_config: dict, out: Path,
                  record_name: str, record: dict, copy_from: Path | None = None) -> dict:
    """Write `model` as a servable package: experts with pruned weights as sparse-bitmask (exactly their mask),
    everything else dense F32; config.json = hf_config with compressed-tensors' sparsity_config updated, plus
    `record_name: record`; golden.json recomputed; tokenizer and validation files copied from `copy_from`.
    Refuses to write if a masked-out weight is not exactly 0.0. Returns the sparsity_config written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    state = model.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    storage = expert_storage(masks)
    for name, tensor in state.items():
        if storage.get(name) == "sparse-bitmask":
            mask = masks[name]
            if bool((tensor[~mask] != 0).any()):
                raise RuntimeError(f"{name}: weights outside the mask are not zero; masks were not maintained")
            for suffix, part in pack_bitmask(tensor, mask).items():
                tensors[f"{name}.{suffix}"] = part
        else:
            tensors[name] = tensor
    safetensors.save(tensors, out / "model.safetensors")
    if copy_from is not None:
        for name in COPIED_FILES:
            if (Path(copy_from) / name).is_file() and Path(copy_from).resolve() != out.resolve():
                shutil.copyfile(Path(copy_from) / name, out / name)
    sparse = [n for n, s in storage.items() if s == "sparse-bitmask"]
    sparsity_config = {
        "format": "sparse-bitmask" if sparse else "dense",
        "global_sparsity": round(1 - density(masks), 6),
        "sparsity_structure": (hf_config.get("quantization_config") or {}).get("sparsity_config", {})
        .get("sparsity_structure", "unstructured"),
        "targets": [n.removesuffix(".weight") for n in sorted(sparse)],
        "ignore": ["lm_head"],
    }
    config = {k: v for k, v in hf_config.items() if k != "quantization_config"}
    if sparse:
        config["quantization_config"] = {"version": COMPRESSED_TENSORS_VERSION, "quant_method": "compressed-tensors",
                                         "sparsity_config": sparsity_config}
    config[record_name] = record
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "golden.json").write_text(json.dumps(golden(model)) + "\n")
    model.train()
    return sparsity_config
