#!/usr/bin/env bash
# Start one training process per local Ascend device from an HCCL rank table. Run it on every
# server of the table, each with its own --server-index (its position in the table's server_list).
#
#   launch/run_distributed.sh --rank-table rank_table.json --config RUN.yaml --server-index I \
#       [--set KEY=VALUE]... [--run-dir DIR] [--python PY] [--bind-core] [--dry-run]
#   launch/run_distributed.sh --backend cpu --config RUN.yaml [--workers N] [--set KEY=VALUE]... [--dry-run]
#       (data-parallel CPU workers under msrun: delegates to launch/run_msrun.sh)
#
# Before starting anything, `python -m pangu_ms preflight` checks that the table parses,
# that its rank count equals the config's dp*mp*pp, that the config validates and that the
# training data exists. Each rank gets RANK_TABLE_FILE, RANK_ID, DEVICE_ID, RANK_SIZE,
# HCCL_CONNECT_TIMEOUT and HCCL_EXEC_TIMEOUT and runs `python -m pangu_ms pretrain --config
# RUN.yaml`; its log and pid go to DIR/rank_<id>.{log,pid} (default DIR:
# runs/launch/<time>_server<I>; DIR/commands.sh holds the exact commands).
# --bind-core: pin local rank i to the i-th equal share of this host's CPU cores (taskset).
# --hccl-connect-timeout S (120..7200, default 1200), --hccl-exec-timeout S (68..17340, default
#   7200): HCCL's link set-up and collective waits (an exported HCCL_*_TIMEOUT is kept).
# MindSpore's dry run (no NPU) goes through msrun: launch/run_msrun.sh --sim-level 1 --sim-rank-id R.
# If one rank exits with an error the others are stopped; Ctrl-C stops all of them.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=launch/common.sh
. "$HERE/common.sh"
RANK_TABLE="" SERVER_INDEX="" RUN_DIR="" WORKERS="" BIND_CORE=0

parse_own() {
  case "$1" in
    --rank-table) RANK_TABLE="${2:?--rank-table needs a file}"; SHIFT=2 ;;
    --server-index) SERVER_INDEX="${2:?--server-index needs a number}"; SHIFT=2 ;;
    --run-dir) RUN_DIR="${2:?--run-dir needs a directory}"; SHIFT=2 ;;
    --workers) WORKERS="${2:?--workers needs a number}"; SHIFT=2 ;;
    --bind-core) BIND_CORE=1; SHIFT=1 ;;
  esac
}

parse_args "$@"
check_common

if [ "$BACKEND" = "cpu" ]; then
  args=(--backend cpu --config "$CONFIG" --python "$PY")
  [ -n "$WORKERS" ] && args+=(--worker-num "$WORKERS")
  [ -n "$RUN_DIR" ] && args+=(--log-dir "$RUN_DIR")
  [ "$DRY_RUN" = 1 ] && args+=(--dry-run)
  [ "$BIND_CORE" = 1 ] && args+=(--bind-core true)
  for s in "${SETS[@]}"; do args+=(--set "$s"); done
  [ -n "$RANK_TABLE" ] && echo "note: --backend cpu ignores the rank table (msrun numbers the CPU workers)" >&2
  exec "$HERE/run_msrun.sh" "${args[@]}"
fi
[ -n "$RANK_TABLE" ] || die "--rank-table is required (build one with: python -m pangu_ms rank-table build)"
[ -n "$SERVER_INDEX" ] || die "--server-index is required (this server's position in the table, 0-based)"

SETS+=("run.device=Ascend")
set_args=()
for s in "${SETS[@]}"; do set_args+=(--set "$s"); done

# ---- pre-flight: nothing is started unless every check passes
if ! plan="$("$PY" -m pangu_ms preflight --config "$CONFIG" --rank-table "$RANK_TABLE" \
      --server-index "$SERVER_INDEX" "${set_args[@]}")"; then
  echo "launch aborted: pre-flight checks failed, no process was started" >&2
  exit 2
fi
RANK_SIZE="" SERVER_ID="" RANKS=() DEVICES=()
while read -r key a b; do
  case "$key" in
    RANK_SIZE=*) RANK_SIZE="${key#RANK_SIZE=}" ;;
    SERVER_ID=*) SERVER_ID="${key#SERVER_ID=}" ;;
    RANK) RANKS+=("$a"); DEVICES+=("$b") ;;
  esac
done <<< "$plan"

TABLE_ABS="$(cd "$(dirname "$RANK_TABLE")" && pwd)/$(basename "$RANK_TABLE")"
[ -n "$RUN_DIR" ] || RUN_DIR="runs/launch/$(date +%Y%m%d_%H%M%S)_server${SERVER_INDEX}"
cmd=("$PY" -m pangu_ms pretrain --config "$CONFIG" "${set_args[@]}")
mapfile -t HCCL_VARS < <(hccl_env)

cores_of() {  # taskset CPU list of local rank index $1 (--bind-core): an equal share of the cores
  local n per
  n="$(nproc 2>/dev/null || echo 1)"
  per=$(( n / ${#RANKS[@]} ))
  [ "$per" -ge 1 ] || per=1
  echo "$(( $1 * per % n ))-$(( ($1 * per % n) + per - 1 ))"
}
BIND=()  # set per rank: (taskset -c LIST) when --bind-core
bind_for() {
  BIND=()
  if [ "$BIND_CORE" = 1 ]; then
    command -v taskset >/dev/null 2>&1 || die "--bind-core needs taskset (util-linux)"
    BIND=(taskset -c "$(cores_of "$1")")
  fi
}

env_line() {  # the exact environment and command of local rank index $1
  bind_for "$1"
  printf 'RANK_TABLE_FILE=%q RANK_ID=%q DEVICE_ID=%q RANK_SIZE=%q' \
    "$TABLE_ABS" "${RANKS[$1]}" "${DEVICES[$1]}" "$RANK_SIZE"
  printf ' %s' "${HCCL_VARS[@]}"
  printf ' %q' "${BIND[@]}" "${cmd[@]}"
  printf ' > %q 2>&1\n' "$RUN_DIR/rank_${RANKS[$1]}.log"
}

echo "server $SERVER_INDEX ($SERVER_ID): ${#RANKS[@]} of $RANK_SIZE ranks; run dir $RUN_DIR" >&2
if [ "$DRY_RUN" = 1 ]; then
  for i in "${!RANKS[@]}"; do env_line "$i"; done
  exit 0
fi

mkdir -p "$RUN_DIR"
for i in "${!RANKS[@]}"; do env_line "$i"; done > "$RUN_DIR/commands.sh"
SETSID=()
command -v setsid >/dev/null 2>&1 && SETSID=(setsid)  # own process group per rank: stop its children too
declare -A RANK_OF=() DEVICE_OF=()
PIDS=()
for i in "${!RANKS[@]}"; do
  r="${RANKS[$i]}"
  bind_for "$i"
  env RANK_TABLE_FILE="$TABLE_ABS" RANK_ID="$r" DEVICE_ID="${DEVICES[$i]}" RANK_SIZE="$RANK_SIZE" "${HCCL_VARS[@]}" \
    "${SETSID[@]}" "${BIND[@]}" "${cmd[@]}" > "$RUN_DIR/rank_${r}.log" 2>&1 &
  pid=$!
  echo "$pid" > "$RUN_DIR/rank_${r}.pid"
  RANK_OF[$pid]="$r" DEVICE_OF[$pid]="${DEVICES[$i]}"
  PIDS+=("$pid")
  echo "started rank $r (device ${DEVICES[$i]}), pid $pid, log $RUN_DIR/rank_${r}.log" >&2
done

any_alive() {
  local pid
  for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && return 0; done
  return 1
}
stop_all() {  # TERM every rank (its whole process group), KILL whatever is left after 10 s
  local pid waited=0
  for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true; done
  while any_alive && [ "$waited" -lt 10 ]; do sleep 1; waited=$((waited + 1)); done
  for pid in "${PIDS[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true; done
}
trap 'echo "interrupted: stopping all ${#PIDS[@]} ranks (logs in $RUN_DIR)" >&2; stop_all; exit 130' INT TERM

# ---- supervise: the first rank that fails stops the others
while [ ${#PIDS[@]} -gt 0 ]; do
  left=()
  for pid in "${PIDS[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then left+=("$pid"); continue; fi
    status=0
    wait "$pid" || status=$?
    r="${RANK_OF[$pid]}"
    if [ "$status" -ne 0 ]; then
      echo "rank $r (device ${DEVICE_OF[$pid]}) failed with exit code $status; its log: $RUN_DIR/rank_${r}.log" >&2
      tail -n 20 "$RUN_DIR/rank_${r}.log" | sed "s/^/  rank $r | /" >&2 || true
      echo "stopping the other ranks on this server" >&2
      stop_all
      exit 1
    fi
    echo "rank $r finished" >&2
  done
  PIDS=("${left[@]}")
  if [ ${#PIDS[@]} -gt 0 ]; then sleep 1; fi
done
echo "all ${#RANKS[@]} ranks on server $SERVER_INDEX finished; logs in $RUN_DIR" >&2
