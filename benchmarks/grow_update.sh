#!/bin/bash
# Issue 10 growing benchmark: run on 4,000 of the 8,121 prepared images, add the other 4,121,
# --update; side by side with a fresh run on all 8,121 (same budget/settings). Hard links keep
# the files identical (same mtime) without copying.
set -eu
REPO=$(cd "$(dirname "$0")/.." && pwd)
SRC=/work/data/clipart; G=/work/data/grow; R=/work/runs/upd
rm -rf $G $R; mkdir -p $G $R
cd $SRC; find . -name '*.png' | sort > /tmp/all.txt
python3 - <<'PY'
import random
files = open("/tmp/all.txt").read().split()
random.Random(0).shuffle(files)
open("/tmp/first.txt", "w").write("\n".join(sorted(files[:4000])) + "\n")
open("/tmp/rest.txt", "w").write("\n".join(sorted(files[4000:])) + "\n")
PY
while read f; do mkdir -p "$G/$(dirname $f)"; ln "$SRC/$f" "$G/$f"; done < /tmp/first.txt
ARGS="--mem-budget 2G --components 800 --k 10 --no-progress"
cd "$REPO"
/usr/bin/time -f "first4000 %e s %M KB" python3 -m stream_cluster $G --out $R/grown $ARGS 2>> $R/times.txt >/dev/null
while read f; do mkdir -p "$G/$(dirname $f)"; ln "$SRC/$f" "$G/$f"; done < /tmp/rest.txt
/usr/bin/time -f "update %e s %M KB" python3 -m stream_cluster $G --out $R/grown $ARGS --update 2>> $R/times.txt >/dev/null
/usr/bin/time -f "fresh8121 %e s %M KB" python3 -m stream_cluster $G --out $R/fresh $ARGS 2>> $R/times.txt >/dev/null
/usr/bin/time -f "update-again-check %e s %M KB" true 2>> $R/times.txt
python3 -m benchmarks.compare_labels $R/grown $R/fresh >> $R/times.txt
python3 - >> $R/times.txt <<'PY'
import json
for r in ["grown", "fresh"]:
    d = json.load(open(f"/work/runs/upd/{r}/run.json"))
    print(r, "EV", round(d["results"]["explained_variance"], 5), "peak GiB", round(d["peak_rss_bytes"]/2**30, 3),
          {k: round(v["seconds"], 1) for k, v in d["stages"].items()}, d.get("update"))
PY
echo done >> $R/times.txt
