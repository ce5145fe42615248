#!/usr/bin/env bash
# Set everything up in .venv, start a local Ray cluster if none is running, and submit the main job (PBT on the
# embedded default dataset) as a Ray job. Extra arguments go to workflows/tune.py, e.g. ./quickstart.sh --smoke-test
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -x .venv/bin/python ]; then
  echo "Creating .venv and installing the project (a minute or two the first time)..."
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# The CPU build of torch first: a bare "torch" would pull a multi-GB CUDA build. On a GPU machine, install the
# torch build for your CUDA instead.
python -c "import torch" 2>/dev/null || python -m pip install --quiet torch==2.13.0
python -m pip install --quiet --quiet -e ".[test]"

# Ray 2.60 protects a cluster with a token when RAY_AUTH_MODE=token; every CLI call below then sends it. `ray start`
# never creates one (only ray.init() does), so make it here once: ~/.ray/auth_token, readable by you alone.
export RAY_AUTH_MODE=token
(umask 077 && ray get-auth-token --generate >/dev/null 2>&1)
# Ports of a new head node; set these when another cluster already uses Ray's defaults.
RAY_PORT=${QUICKSTART_RAY_PORT:-6379}
DASHBOARD_PORT=${QUICKSTART_DASHBOARD_PORT:-8265}
AGENT_PORT=${QUICKSTART_AGENT_PORT:-52365}
DASHBOARD=http://127.0.0.1:$DASHBOARD_PORT

# Submit the job and follow its log; exit with the job's outcome. Right after a head starts, its job API answers
# "No available agent" for a few seconds and submits nothing: try again then.
submit() {
  local id out
  id="satresnet-$(date +%Y%m%d-%H%M%S)"
  for _ in $(seq 60); do
    if out=$(ray job submit --address "$DASHBOARD" --submission-id "$id" --no-wait -- "$@" 2>&1); then
      echo "Submitted job $id (the job goes on if you press Ctrl+C here; stop it with: ray job stop $id)"
      ray job logs --address "$DASHBOARD" --follow "$id"
      local status
      status=$(ray job status --address "$DASHBOARD" "$id" 2>&1 || true)
      if grep -q "' succeeded" <<<"$status"; then
        echo "Job $id succeeded."
        return 0
      fi
      echo "Job $id did not succeed: $(grep -E "Job '|Status" <<<"$status" | sed 's/^.* -- //' | tr '\n' ' ')" >&2
      return 1
    fi
    case "$out" in
      *"No available agent"*) sleep 1 ;;
      *) echo "$out" >&2; return 1 ;;
    esac
  done
  echo "error: the Ray job API at $DASHBOARD did not accept the job within a minute" >&2
  return 1
}

login_help() {
  echo "Dashboard: $DASHBOARD (Jobs shows this job and its log). It asks for the cluster's token: paste the output of"
  echo "    $PWD/.venv/bin/ray get-auth-token"
}

if ! ray status >/dev/null 2>&1; then
  # Loopback only: the dashboard and job API run arbitrary code for anyone who can reach them.
  # Refuse taken ports before starting anything: ray start would carry on without a dashboard or job agent, and the
  # job API needs both. (Binding the port on every interface, without listening, only tests it.)
  for port in "$RAY_PORT" "$DASHBOARD_PORT" "$AGENT_PORT"; do
    if ! python -c "import socket; socket.socket().bind(('', $port))" 2>/dev/null; then
      echo "error: port $port on 127.0.0.1 is taken by another program; choose free ports, for example" \
        "QUICKSTART_RAY_PORT=6380 QUICKSTART_DASHBOARD_PORT=8266 QUICKSTART_AGENT_PORT=52366 ./quickstart.sh" >&2
      exit 2
    fi
  done
  ray start --head --port "$RAY_PORT" --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" \
    --dashboard-agent-listen-port "$AGENT_PORT" --disable-usage-stats
  login_help
  echo "Stop the cluster with: $PWD/.venv/bin/ray stop"
  # The job runs in the directory the head node was started in: this one, so results land in ./results.
  submit python workflows/tune.py "$@"
else
  # A cluster started elsewhere runs jobs in its own directory: name the script and results absolutely.
  echo "Using the running Ray cluster."
  login_help
  submit python "$PWD/workflows/tune.py" --results "$PWD/results/tune-$(date +%Y%m%d-%H%M%S)" "$@"
fi
