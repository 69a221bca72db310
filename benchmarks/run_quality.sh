#!/bin/sh
# The runs behind benchmarks/RESULTS_quality.md (issue 18), from the repository root:
#   sh benchmarks/run_quality.sh sets      # build the labelled folders under $QSETS
#   sh benchmarks/run_quality.sh digits8|digits8-peer|tuxpaint|digits300
#   sh benchmarks/run_quality.sh clipart   # the prepared clip-art (heavy: cheap rows + candidates)
# Needs benchmarks/requirements-quality.txt; the clustimage rows need $CLUSTIMAGE_PY (a venv).
set -eu
QSETS=${QSETS:-/tmp/qsets}
CLUSTIMAGE_PY=${CLUSTIMAGE_PY:-/tmp/qvenv-clustimage/bin/python}
export PYTHONPATH="$PWD"
Q="nice -n 10 python -m benchmarks.quality"
MAIN=stream-cluster,raw-kmeans,pca-kmeans,pca-umap-kmeans,pca-tsne-kmeans,pca-umap-hdbscan,pca-umap-kmeans@S,pca-tsne-kmeans@S,hog-pca-kmeans,hog-pca-umap-kmeans,hog-pca-tsne-kmeans
case "$1" in
sets)
  python -m benchmarks.labelled_sets digits "$QSETS/digits8" --size 8x8
  python -m benchmarks.labelled_sets digits "$QSETS/digits300" --size 300x430
  python -m benchmarks.labelled_sets tuxpaint "$QSETS/tuxpaint" --size 300x430
  python -m benchmarks.labelled_sets clipart ;;
digits8)
  $Q "$QSETS/digits8" --name digits8 --size 8x8 --components 40 --embed-components 40 \
     --sample 500 --repeats 3 --pipelines "$MAIN"
  $Q "$QSETS/digits8" --name digits8 --size 8x8 --components 40 --embed-components 40 \
     --pipelines kauto,stream-cluster-kauto ;;
digits8-peer)
  $Q "$QSETS/digits8" --name digits8-clustimage --size 8x8 --components 40 \
     --pipelines clustimage,clustimage-k --clustimage-python "$CLUSTIMAGE_PY" ;;
tuxpaint)
  # Asked with --repeats 3; stopped after the first round (deadline; see RESULTS_quality.md).
  $Q "$QSETS/tuxpaint" --name tuxpaint --size 300x430 --components 800 --sample 400 \
     --repeats 3 --pipelines "$MAIN"
  $Q "$QSETS/tuxpaint" --name tuxpaint --size 300x430 --components 800 \
     --pipelines clustimage-k --clustimage-python "$CLUSTIMAGE_PY" ;;
digits300)
  # raw-kmeans left out: on 129,000-pixel rows it ran > 15 min under the shared machine's load
  $Q "$QSETS/digits300" --name digits300 --size 300x430 --components 800 --sample 500 \
     --repeats 1 --pipelines "$(echo "$MAIN" | sed 's/raw-kmeans,//')" ;;
clipart)
  $Q /work/data/clipart --name clipart --size 300x430 --components 800 --sample 2000 \
     --n-init 3 --repeats 1 \
     --pipelines stream-cluster,raw-kmeans,pca-kmeans,pca-umap-kmeans,pca-tsne-kmeans,pca-umap-kmeans@S
  # raw-kmeans above was stopped by hand after 18.6 min (12 GiB peak); then a larger sample:
  $Q /work/data/clipart --name clipart --size 300x430 --components 800 --sample 5000 \
     --n-init 3 --reuse-features --pipelines pca-umap-kmeans@S
  $Q /work/data/clipart --name clipart --size 300x430 --components 800 --sample 2000 \
     --n-init 3 --reuse-features --pipelines hog-pca-kmeans,hog-pca-umap-kmeans ;;
*) echo "usage: $0 sets|digits8|digits8-peer|tuxpaint|digits300|clipart" >&2; exit 2 ;;
esac
