"""Compare two runs' labels.csv: ARI, identical partition, distances to 4 decimals.

    python -m benchmarks.compare_labels RUN_A RUN_B
"""
from __future__ import annotations

import csv
import sys

import numpy as np
from sklearn.metrics import adjusted_rand_score


def read(p):
    with open(p, newline="", encoding="utf-8", errors="surrogateescape") as fh:
        return {r["path"]: (int(r["cluster"]), float(r["distance"])) for r in csv.DictReader(fh)}
a, b = read(sys.argv[1] + "/labels.csv"), read(sys.argv[2] + "/labels.csv")
assert a.keys() == b.keys(), "different image sets"
ks = sorted(a)
la, lb = [a[k][0] for k in ks], [b[k][0] for k in ks]
da, db = np.array([a[k][1] for k in ks]), np.array([b[k][1] for k in ks])
print(f"n={len(ks)} ARI={adjusted_rand_score(la, lb):.6f} max|dist diff|={np.abs(da-db).max():.2e} "
      f"equal to 4 decimals: {bool(np.all(np.round(da,4)==np.round(db,4)))}")
