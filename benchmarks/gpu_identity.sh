#!/usr/bin/env bash
# Issue #11 on a GPU: the workflow's own pretrain and embed steps (bf16, packed batches) with the
# sizes of config/demo_gpu.yaml, on the demo corpus (results/ from a demo run), then kNN accuracy
# (k 10) of the embeddings on the simulated evaluation sets. Prints one JSON line per configuration.
#   OUT=/tmp/out STEPS=2400 bash benchmarks/gpu_identity.sh learned-soft learned-continuous
set -euo pipefail
OUT=${OUT:-results/gpu_identity}
STEPS=${STEPS:-2400}
PY=${PYTHON:-python}
settings() {  # $1 gene, $2 expression: the pretrain settings of config/demo_gpu.yaml
  cat <<JSON
{"loader": {"batch_size": 128, "bucket_batches": 20, "c_norm": 10000, "context": 256, "layout": "packed", "p_mask": 0.5, "seed": 0},
 "model": {"d_ff": 256, "d_model": 128, "dropout": 0.0, "expression_encoding": "$2", "gene_encoding": "$1", "n_heads": 4, "n_layers": 4},
 "train": {"betas": [0.9, 0.95], "checkpoint_every": 400, "grad_accum": 1, "grad_clip": 1.0, "log_every": 50, "lr": 0.002,
           "max_steps": $STEPS, "missing_genes": "error", "num_workers": 0, "on_nonfinite": "finish", "patience": 100,
           "precision": "auto", "val_cells": 2000, "val_every": 200, "warmup_steps": 100, "weight_decay": 1e-05}}
JSON
}
one() {  # $1 = gene-expression
  local run="$1-s0" gene=${1%%-*} expression=${1#*-} table=()
  [[ $gene != learned ]] && table=(--gene-embeddings results/esm/esm2_tiny_demo/gene_embeddings.parquet)
  local start=$SECONDS
  $PY -m scencode pretrain --name "$run" --corpus results/tokens/train --vocab results/vocab.parquet "${table[@]}" \
    --threads 2 --params "$(settings "$gene" "$expression")" --out "$OUT/models/$run" > "$OUT/$run.pretrain.log" 2>&1
  local trained=$((SECONDS - start))
  for dataset in sim_blood_eval sim_lung_eval; do
    $PY -m scencode embed --model "$OUT/models/$run/model.json" --corpus "results/tokens/$dataset" --run "$run" \
      --dataset "$dataset" --params '{"batch_size": 128, "context": 256, "p_mask": 0.5, "layout": "packed"}' --threads 2 \
      --out "$OUT/embeddings/$run/$dataset.parquet" --reconstruction "$OUT/embeddings/$run/$dataset.json" >> "$OUT/$run.embed.log" 2>&1
  done
  $PY - "$OUT" "$run" "$trained" <<'PYTHON'
import json, sys
import numpy as np, pandas as pd, pyarrow.parquet as pq, torch
sys.path.insert(0, "benchmarks")
from identity_sweep import knn_accuracy
out, run, seconds = sys.argv[1:]
status = json.load(open(f"{out}/models/{run}/model.json"))
log = pq.read_table(f"{out}/models/{run}/train_log.parquet").to_pandas()
result = {"run": run, "train_seconds": int(seconds), "status": status["status"],
          "best_val_loss": float(log.val_loss.min()), "last_train_loss": float(log.train_loss.dropna().iloc[-1])}
for dataset in ("sim_blood_eval", "sim_lung_eval"):
    table = pd.read_parquet(f"{out}/embeddings/{run}/{dataset}.parquet")
    x = torch.tensor(np.stack(table.embedding.to_numpy()), dtype=torch.float32)
    recon = json.load(open(f"{out}/embeddings/{run}/{dataset}.json"))
    result[dataset] = {"knn": knn_accuracy(x, table.label.astype(str).to_numpy()),
                       **{k: round(v, 4) for k, v in recon.items() if isinstance(v, float)}}
print(json.dumps(result), flush=True)
PYTHON
}
mkdir -p "$OUT"
for configuration in "$@"; do one "$configuration" & done
wait
