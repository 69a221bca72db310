#!/usr/bin/env bash
# Interleaved pairs on the seed workload (8,121 prepared clip-art images, --mem-budget 2G
# --components 800 --k 10) between two source trees with the same extra options, then how far
# their partitions agree (ARI of the first pair's labels; whether labels.csv is byte-identical).
#   bash benchmarks/tree_pairs.sh PREV_TREE NEW_TREE OUT_DIR PAIRS [OPTIONS...]
# e.g. bash benchmarks/tree_pairs.sh /work/wt-base21 /work/wt-new21 /tmp/p21 3 --space pca
# Each run goes from /tmp (benchmarks/pairs_lib.sh).
set -u
prev=$1; new=$2; out=$3; pairs=$4; shift 4
corpus=${CORPUS:-/work/data/clipart}
seed=(--mem-budget 2G --components 800 --k 10 --no-progress "$@")
mkdir -p "$out"; out=$(cd "$out" && pwd); : > "$out/times.txt"
# shellcheck source=benchmarks/pairs_lib.sh
. "$(dirname "$0")/pairs_lib.sh"
for i in $(seq 1 "$pairs"); do
  run "$prev" "prev-$i"
  run "$new" "new-$i"
done
python3 - "$out" <<'PY'
import csv, json, statistics, sys
from pathlib import Path
from sklearn.metrics import adjusted_rand_score
out = Path(sys.argv[1])
rows = [l.split() for l in (out / "times.txt").read_text().splitlines()]
t = {n: (float(s), int(p)) for n, s, p in rows}
ratios = [t[f"new-{i}"][0] / t[f"prev-{i}"][0] for i in range(1, 99) if f"new-{i}" in t]
lab = lambda n: {r["path"]: r["cluster"] for r in csv.DictReader(open(out / n / "labels.csv"))}
a, b = lab("prev-1"), lab("new-1")
ev = lambda n: json.load(open(out / n / "run.json")).get("results", {}).get("explained_variance")
print(f"walls {[(round(t[f'prev-{i}'][0], 1), round(t[f'new-{i}'][0], 1)) for i in range(1, len(ratios) + 1)]}")
print(f"wall ratios new/prev {['%.3f' % r for r in ratios]} median {statistics.median(ratios):.3f}")
print("peaks MiB", {n: round(p / 2**20) for n, (s, p) in t.items()})
print(f"explained variance prev {ev('prev-1')} new {ev('new-1')}")
print(f"partition new-1 vs prev-1: ARI {adjusted_rand_score([a[k] for k in a], [b[k] for k in a]):.6f}, "
      f"labels.csv identical: {(out / 'prev-1/labels.csv').read_bytes() == (out / 'new-1/labels.csv').read_bytes()}")
PY
