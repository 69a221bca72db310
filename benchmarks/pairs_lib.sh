# Shared by seed_pairs.sh and tree_pairs.sh (source it; not run on its own): one timed
# stream-cluster run of a source tree on the seed workload, appended to $out/times.txt as
# "NAME WALL_S PEAK_RSS_BYTES". Needs $out, $corpus and the array seed=(...) to be set.
# Runs from /tmp: `python -m` puts the working directory ahead of PYTHONPATH.
run() {  # tree name [extra options...]
  local tree=$1 name=$2; shift 2
  rm -rf "$out/$name"
  local s e; s=$(date +%s.%N)
  (cd /tmp && PYTHONPATH=$tree python3 -m stream_cluster "$corpus" "${seed[@]}" \
    --out "$out/$name" "$@" > "$out/$name.log" 2>&1)
  e=$(date +%s.%N)
  echo "$name $(echo "$e - $s" | bc) $(python3 -c "import json;print(json.load(open('$out/$name/run.json'))['peak_rss_bytes'])")" >> "$out/times.txt"
  rm -rf "$out/$name/pixels" "$out/$name/features" "$out/$name/descriptors"
}
