#!/usr/bin/env bash
# Prune the bundled model, score it, fine-tune it with fixed masks, score it again; one arm per argument:
#
#   bash training/finetune-suite.sh magnitude-70 sparsegpt-90 ...      (default: all four arms)
#
# Each arm reads training/configs/finetune-<arm>.json (its "prepare" field is the prune command). Steps already done
# are skipped (pruned package present, eval JSON present, fine-tune resumes from its checkpoint), so an interrupted
# suite continues where it stopped. One JSON line per arm is appended to training/runs/finetune-suite.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
OUT=training/runs/finetune-suite
mkdir -p "$OUT"
arms=("$@")
[ ${#arms[@]} -gt 0 ] || arms=(magnitude-70 magnitude-90 sparsegpt-70 sparsegpt-90)

field() { $PY -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"; }
seconds() { date +%s; }

if [ ! -s "$OUT/dense.eval.json" ]; then
  node bin/switchyard.mjs eval --model models/switchyard-moe --workers 1 --json -q > "$OUT/dense.eval.json"
fi
[ -s "$OUT/dense.decode.json" ] || npx tsx bench/decode.ts models/switchyard-moe --json 2>/dev/null > "$OUT/dense.decode.json"
for arm in "${arms[@]}"; do
  config=training/configs/finetune-$arm.json
  [ -f "$config" ] || { echo "no config $config (arms: magnitude-70 magnitude-90 sparsegpt-70 sparsegpt-90)" >&2; exit 2; }
  package=$(field "$config" package)
  export_dir=$(field "$config" export_dir)
  if [ ! -f "$package/model.safetensors" ]; then
    t0=$(seconds); eval "$(field "$config" prepare) -q"; t1=$(seconds)
    echo "{\"arm\":\"$arm\",\"prune_seconds\":$((t1 - t0))}" > "$OUT/$arm.prune.json"
  fi
  [ -s "$OUT/$arm.before.json" ] || node bin/switchyard.mjs eval --model "$package" --workers 1 --json -q > "$OUT/$arm.before.json"
  t0=$(seconds); $PY -m training.finetune --config "$config" | tee "$OUT/$arm.finetune.log"; t1=$(seconds)
  [ -s "$OUT/$arm.after.json" ] || node bin/switchyard.mjs eval --model "$export_dir" --workers 1 --json -q > "$OUT/$arm.after.json"
  [ -s "$OUT/$arm.decode.json" ] || npx tsx bench/decode.ts "$export_dir" --json 2>/dev/null > "$OUT/$arm.decode.json"
  $PY - "$arm" "$config" "$OUT" "$((t1 - t0))" <<'EOF' | tee -a training/runs/finetune-suite.jsonl
import json, sys
arm, config, out, last_wall = sys.argv[1:]
cfg = json.load(open(config))
hf = json.load(open(f"{cfg['export_dir']}/config.json"))
record = hf["switchyard_finetune"]
print(json.dumps({"arm": arm, "config": config,
                  "dense_val_bpb": json.load(open(f"{out}/dense.eval.json"))["val_bpb"],
                  "before_val_bpb": json.load(open(f"{out}/{arm}.before.json"))["val_bpb"],
                  "after_val_bpb": json.load(open(f"{out}/{arm}.after.json"))["val_bpb"],
                  "before_greedy_agreement": json.load(open(f"{out}/{arm}.before.json")).get("greedy_agreement"),
                  "after_greedy_agreement": json.load(open(f"{out}/{arm}.after.json")).get("greedy_agreement"),
                  "dense_decode_tok_s": json.load(open(f"{out}/dense.decode.json"))["decode_tok_s"],
                  "after_decode_tok_s": json.load(open(f"{out}/{arm}.decode.json"))["decode_tok_s"],
                  "after_kernels": json.load(open(f"{out}/{arm}.decode.json"))["kernels"],
                  "expert_density": record["expert_density"], "steps": record["steps"], "tokens": record["tokens"],
                  "training_seconds": record["training_seconds"], "last_invocation_wall_s": float(last_wall),
                  "stored_global_sparsity": hf["quantization_config"]["sparsity_config"]["global_sparsity"]}))
EOF
done
