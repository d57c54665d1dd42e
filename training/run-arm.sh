#!/usr/bin/env bash
# Train one arm of the sparsity comparisons (resuming from its checkpoint), score its package with
# `switchyard eval`, measure served decode tokens/s, and append one JSON line to training/runs/arms.jsonl:
#
#   bash training/run-arm.sh sparse_train training/configs/sparse-proxy-rigl.json
#   bash training/run-arm.sh lottery training/configs/lottery-proxy-ticket.json
#   bash training/run-arm.sh distill training/configs/distill-proxy.json
set -euo pipefail
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
module=${1:?usage: bash training/run-arm.sh sparse_train|lottery|distill CONFIG}
config=${2:?usage: bash training/run-arm.sh sparse_train|lottery|distill CONFIG}
case "$module" in sparse_train|lottery|distill) ;; *) echo "unknown module $module: use sparse_train, lottery or distill" >&2; exit 2;; esac
[ -f "$config" ] || { echo "no config $config (see training/configs/)" >&2; exit 2; }
name=$(basename "$config" .json)
mkdir -p training/runs/arms
package=$($PY -c "import json,sys; print(json.load(open(sys.argv[1]))['export_dir'])" "$config")
t0=$(date +%s)
$PY -m "training.$module" --config "$config" | tee "training/runs/arms/$name.log"
t1=$(date +%s)
node bin/switchyard.mjs eval --model "$package" --reference "$package" --workers 1 --json -q > "training/runs/arms/$name.eval.json"
npx tsx bench/decode.ts "$package" --json --workers 2 2>/dev/null > "training/runs/arms/$name.decode.json"
$PY - "$name" "$module" "$config" "$package" "$((t1 - t0))" <<'EOF' | tee -a training/runs/arms.jsonl
import json, sys
name, module, config, package, wall = sys.argv[1:]
hf = json.load(open(f"{package}/config.json"))
record = next(v for k, v in hf.items() if k.startswith("switchyard_") and isinstance(v, dict) and "command" in v)
ev = json.load(open(f"training/runs/arms/{name}.eval.json"))
dec = json.load(open(f"training/runs/arms/{name}.decode.json"))
sparsity = (hf.get("quantization_config") or {}).get("sparsity_config", {}).get("global_sparsity", 0.0)
print(json.dumps({"arm": name, "module": module, "config": config, "package": package, "val_bpb": ev["val_bpb"],
                  "val_windows": ev["windows"], "expert_density": round(1 - sparsity, 6),
                  "tokens": record.get("tokens", record.get("tokens_all_rounds")),
                  "training_seconds": record.get("training_seconds", record.get("training_seconds_all_rounds")),
                  "last_invocation_wall_s": int(wall), "decode_tok_s": dec["decode_tok_s"],
                  "kernels": dec["kernels"], "record": record}))
EOF
