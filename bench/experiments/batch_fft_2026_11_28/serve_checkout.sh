# Sourced by rest_e2e.sh and rest_load.sh: start the one-process server of checkout $1
# (absolute path) on 127.0.0.1:$2, wait until it is ready (SERVER_PID; PY = the repo's venv
# python), and stop it at exit.
set -u
PY=${PY:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)/.venv/bin/python}
cd "$1"
PYTHONPATH="$1" "$PY" -m server --port "$2" --host 127.0.0.1 >"/tmp/serve_$2.log" 2>&1 &
SERVER_PID=$!
trap 'kill $SERVER_PID; wait $SERVER_PID 2>/dev/null' EXIT
for _ in $(seq 120); do curl -sf "http://127.0.0.1:$2/readyz" >/dev/null && break; sleep 0.5; done
