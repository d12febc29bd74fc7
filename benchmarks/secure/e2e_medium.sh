#!/usr/bin/env bash
# Medium (conf/medium.toml, 2 rounds, seed 0) through `flwr run`: the clear path, secure-stats with the
# clear round's vocabulary shared as vocab-path, and secure-stats with the vocabulary from 50,000
# public candidate words; then compares the results. Needs HASA_DATA_DIR with medium_data.csv.
set -euo pipefail
out=${1:?usage: e2e_medium.sh OUT_FOLDER}
mkdir -p "$out"
out=$(cd "$out" && pwd)
common="num-server-rounds=2 save-model=false seed=0"
hasa run --run-config conf/medium.toml --run-config "$common results-dir='$out/clear'" > "$out/clear.log" 2>&1
hasa split "$HASA_DATA_DIR/medium_data.csv" --client-column publication --out "$out/per-publication" > /dev/null
hasa vocab "$out/per-publication" --seed 0 --out "$out/vocab.txt"
hasa candidates --top 50000 --out "$out/candidates.txt"
hasa run --run-config conf/medium.toml --run-config "$common secure-stats=true vocab-path='$out/vocab.txt' results-dir='$out/secure-shared-vocab'" > "$out/secure-shared.log" 2>&1
hasa run --run-config conf/medium.toml --run-config "$common secure-stats=true vocab-candidates='$out/candidates.txt' results-dir='$out/secure-candidates'" > "$out/secure-candidates.log" 2>&1
python - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
runs = {name: json.loads(next((out / name).glob("*/results.json")).read_text())
        for name in ("clear", "secure-shared-vocab", "secure-candidates")}
clear = runs["clear"]
for name in ("secure-shared-vocab", "secure-candidates"):
    r = runs[name]
    same = lambda key: [c[key] for c in r["clients"]] == [c[key] for c in clear["clients"]]
    print(f"{name} vs clear: vocabulary {r['vocabulary']['size']} vs {clear['vocabulary']['size']} words "
          f"(same hash: {r['vocabulary']['hash'] == clear['vocabulary']['hash']}); scores identical {same('score')}; "
          f"widths identical {same('width')}; accuracies identical {same('accuracy')}; "
          f"history identical {[h['accuracies'] for h in r['history']] == [h['accuracies'] for h in clear['history']]}; "
          f"mean {r['summary']['mean']:.4f} vs {clear['summary']['mean']:.4f}; max |width diff| "
          f"{max(abs(a['width'] - b['width']) for a, b in zip(r['clients'], clear['clients'])):.4f}; "
          f"secure rounds {[(s['what'], s['seconds']) for s in r['privacy']['secure_rounds']]}")
PY
