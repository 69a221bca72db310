#!/bin/sh
# The side-by-side runs behind README's quality table (issue 18: the learned space and the
# features), from the repository root; sets built by `sh benchmarks/run_quality.sh sets`.
#   sh benchmarks/run_quality_space.sh digits8|digits32|digits300|tuxpaint|clipart [ROWS]
# ROWS defaults to every CLI row; digits8 and tuxpaint add the peer clustimage (k fixed), which
# needs $CLUSTIMAGE_PY (a venv with clustimage 1.7.1). QNAME (default q) prefixes the record's
# name (so other rows do not replace q-*), PEER='' leaves the peer row out.
set -eu
QSETS=${QSETS:-/tmp/qsets}
CLUSTIMAGE_PY=${CLUSTIMAGE_PY:-/tmp/qvenv-clustimage/bin/python}
export PYTHONPATH="$PWD"
Q="nice -n 10 python -m benchmarks.quality --fresh"
CLI='stream-cluster,stream-cluster[--space=pca],stream-cluster[--features=pixels],stream-cluster[--features=hog --space=pca],stream-cluster[--cluster=hdbscan]'
ROWS=${2:-$CLI}
N=${QNAME:-q}
PEER=${PEER-,clustimage-k}
case "$1" in
digits8)   $Q "$QSETS/digits8" --name $N-digits8 --size 8x8 --components 40 \
             --pipelines "$ROWS$PEER" --clustimage-python "$CLUSTIMAGE_PY" ;;
digits32)  $Q "$QSETS/digits32" --name $N-digits32 --size 32x32 --components 40 --pipelines "$ROWS" ;;
digits300) $Q "$QSETS/digits300" --name $N-digits300 --size 300x430 --components 800 --pipelines "$ROWS" ;;
tuxpaint)  $Q "$QSETS/tuxpaint" --name $N-tuxpaint --size 300x430 --components 800 \
             --pipelines "$ROWS$PEER" --clustimage-python "$CLUSTIMAGE_PY" ;;
clipart)   $Q /work/data/clipart --name $N-clipart --size 300x430 --components 800 --n-init 3 --pipelines "$ROWS" ;;
*) echo "usage: $0 digits8|digits32|digits300|tuxpaint|clipart [ROWS]" >&2; exit 2 ;;
esac
