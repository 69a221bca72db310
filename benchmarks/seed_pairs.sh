#!/usr/bin/env bash
# Interleaved pairs on the seed workload (8,121 prepared clip-art images, --mem-budget 2G
# --components 800 --k 10): the previous commit's worktree against this one, each with its own
# options, then this one on the seed's path (--space pca --features pixels) for the partition.
#   bash benchmarks/seed_pairs.sh PREV_TREE NEW_TREE OUT_DIR [PAIRS]
# Each run goes from /tmp (benchmarks/pairs_lib.sh).
set -u
prev=$1; new=$2; out=$3; pairs=${4:-3}
corpus=${CORPUS:-/work/data/clipart}
seed=(--mem-budget 2G --components 800 --k 10 --no-progress)
mkdir -p "$out"; out=$(cd "$out" && pwd)
# shellcheck source=benchmarks/pairs_lib.sh
. "$(dirname "$0")/pairs_lib.sh"
for i in $(seq 1 "$pairs"); do
  run "$prev" "prev-$i"
  run "$new" "new-$i"
done
run "$new" "new-seedpath" --space pca --features pixels
python3 - "$out" <<'PY'
import csv, statistics, sys
from pathlib import Path
from sklearn.metrics import adjusted_rand_score
out = Path(sys.argv[1])
rows = [l.split() for l in (out / "times.txt").read_text().splitlines()]
t = {n: (float(s), int(p)) for n, s, p in rows}
ratios = [t[f"new-{i}"][0] / t[f"prev-{i}"][0] for i in range(1, 99) if f"new-{i}" in t]
lab = lambda n: {r["path"]: r["cluster"] for r in csv.DictReader(open(out / n / "labels.csv"))}
a, b = lab("prev-1"), lab("new-seedpath")
print(f"wall ratios {['%.3f' % r for r in ratios]} median {statistics.median(ratios):.3f}")
print("peaks MiB", {n: round(p / 2**20) for n, (s, p) in t.items()})
print(f"seed path vs previous: ARI {adjusted_rand_score([a[k] for k in a], [b[k] for k in a]):.6f}, "
      f"labels.csv identical: {(out / 'prev-1/labels.csv').read_bytes() == (out / 'new-seedpath/labels.csv').read_bytes()}")
PY
