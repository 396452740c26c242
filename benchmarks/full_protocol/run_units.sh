#!/usr/bin/env bash
# Run the full-protocol grid as (row, seed) units of 10 folds, so that several workers (one per core) share
# it and finished units can be kept apart from checkpoints (see sync_results.py).
#   usage: run_units.sh WORKER_NAME RUNS_DIR [UNITS_FILE]
#   env:   GRID_PYTHON  the python that imports the medmoe to measure (default: python)
# Each line of UNITS_FILE is "dataset model patch_embed"; a unit is skipped when its 10 fold_result.json exist
# or another worker has claimed it (RUNS_DIR/claims/<unit>). Progress: RUNS_DIR/log_grid.txt, logs/<unit>.log.
set -u
name=$1; runs=$2; units=${3:-$(dirname "$(readlink -f "$0")")/units.txt}
py=${GRID_PYTHON:-python}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
cd "$runs" && mkdir -p claims logs out
while read -r ds model embed; do
  [ -z "$ds" ] && continue
  for seed in 0 1 2 3 4; do
    unit="$ds.$model.$embed.seed$seed"
    n=$(ls out/"$ds"/"$model"/"$embed"/seed$seed/fold*/fold_result.json 2>/dev/null | wc -l)
    [ "$n" -ge 10 ] && continue
    mkdir claims/"$unit" 2>/dev/null || continue
    echo "$(date -u +%FT%T) $name start $unit" >> log_grid.txt
    "$py" -c "import sys; sys.argv = ['medmoe'] + sys.argv[1:]; from medmoe.cli.main import app; app()" \
      mil compare -m "$model" -d "$ds" --patch-embed "$embed" --k 10 --seed "$seed" --out out --resume --jobs 1 \
      > logs/"$unit".log 2>&1
    echo "$(date -u +%FT%T) $name end $unit rc=$?" >> log_grid.txt
  done
done < "$units"
echo "$(date -u +%FT%T) $name queue empty" >> log_grid.txt
