#!/usr/bin/env bash
# Set everything up in .venv, start a local Ray cluster if none is running, and submit the main job (PBT on the
# embedded default dataset) as a Ray job. Extra arguments go to workflows/tune.py, e.g. ./quickstart.sh --smoke-test
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# The CPU build of torch first: a bare "torch" would pull a multi-GB CUDA build. On a GPU machine, install the
# torch build for your CUDA instead.
python -c "import torch" 2>/dev/null || python -m pip install --quiet torch==2.13.0
python -m pip install --quiet -e ".[test]"

# Ray 2.60 protects a new cluster with a token (~/.ray/auth_token); token mode makes the CLI send it.
export RAY_AUTH_MODE=token
if ! ray status >/dev/null 2>&1; then
  # Loopback only: the dashboard and job API run arbitrary code for anyone who can reach them.
  ray start --head --dashboard-host 127.0.0.1
  echo "Dashboard: http://127.0.0.1:8265 (Jobs, Cluster, Train and Tune views)"
  # The job runs in the directory the head node was started in: this one, so results land in ./results.
  ray job submit --address http://127.0.0.1:8265 -- python workflows/tune.py "$@"
else
  # A cluster started elsewhere runs jobs in its own directory: name the script and results absolutely.
  echo "Using the running Ray cluster; dashboard: http://127.0.0.1:8265"
  ray job submit --address http://127.0.0.1:8265 -- \
    python "$PWD/workflows/tune.py" --results "$PWD/results/tune-$(date +%Y%m%d-%H%M%S)" "$@"
fi
