#!/usr/bin/env bash
# Run the full-protocol grid as (row, seed) units of 10 folds: one worker of `medmoe mil grid`, which takes
# units from an Optuna study shared by all workers (start one per core, on any machine that reaches the
# storage and RUNS_DIR; see docs/scaling.md). A killed unit is queued again; finished units are skipped.
#   usage: run_units.sh WORKER_NAME RUNS_DIR [UNITS_FILE]
#   env:   GRID_PYTHON   the python that imports the medmoe to measure (default: python)
#          GRID_STORAGE  the Optuna storage URL (default: sqlite:///RUNS_DIR/grid.db)
# Layout as before: RUNS_DIR/out (the runs), RUNS_DIR/logs/<unit>.log, RUNS_DIR/log_grid.txt.
set -eu
name=$1; runs=$2; units=${3:-$(dirname "$(readlink -f "$0")")/units.txt}
py=${GRID_PYTHON:-python}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$runs"
exec "$py" -m medmoe.cli mil grid "$units" --out "$runs" --storage "${GRID_STORAGE:-sqlite:///$(readlink -f "$runs")/grid.db}" \
  --k 10 --seed 0 --seed 1 --seed 2 --seed 3 --seed 4 --worker "$name"
