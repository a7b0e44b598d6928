#!/usr/bin/env bash
# Start one training process per local Ascend device from an HCCL rank table. Run it on every
# server of the table, each with its own --server-index (its position in the table's server_list).
#
#   launch/run_distributed.sh --rank-table rank_table.json --config RUN.yaml --server-index I \
#       [--set KEY=VALUE]... [--run-dir DIR] [--python PY] [--dry-run]
#   launch/run_distributed.sh --backend cpu --config RUN.yaml [--workers N] [--set KEY=VALUE]... [--dry-run]
#       (data-parallel CPU workers under msrun: delegates to launch/run_msrun.sh)
#
# Before starting anything, `python -m pangu_ms preflight` checks that the table parses,
# that its rank count equals the config's dp*mp*pp, that the config validates and that the
# training data exists. Each rank gets RANK_TABLE_FILE, RANK_ID, DEVICE_ID and RANK_SIZE and runs
# `python -m pangu_ms pretrain --config RUN.yaml`; its log and pid go to DIR/rank_<id>.{log,pid}
# (default DIR: runs/launch/<time>_server<I>; DIR/commands.sh holds the exact commands).
# If one rank exits with an error the others are stopped; Ctrl-C stops all of them.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RANK_TABLE="" CONFIG="" SERVER_INDEX="" RUN_DIR="" BACKEND="ascend" WORKERS="" DRY_RUN=0
PY="${PYTHON:-python3}"
SETS=()

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"; exit "${1:-2}"; }
die() { echo "error: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --rank-table) RANK_TABLE="${2:?--rank-table needs a file}"; shift 2 ;;
    --config) CONFIG="${2:?--config needs a file}"; shift 2 ;;
    --server-index) SERVER_INDEX="${2:?--server-index needs a number}"; shift 2 ;;
    --set) SETS+=("${2:?--set needs KEY=VALUE}"); shift 2 ;;
    --run-dir) RUN_DIR="${2:?--run-dir needs a directory}"; shift 2 ;;
    --backend) BACKEND="${2:?--backend needs ascend or cpu}"; shift 2 ;;
    --workers) WORKERS="${2:?--workers needs a number}"; shift 2 ;;
    --python) PY="${2:?--python needs an interpreter}"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[ -n "$CONFIG" ] || die "--config is required"

if [ "$BACKEND" = "cpu" ]; then
  args=(--backend cpu --config "$CONFIG" --python "$PY")
  [ -n "$WORKERS" ] && args+=(--worker-num "$WORKERS")
  [ -n "$RUN_DIR" ] && args+=(--log-dir "$RUN_DIR")
  [ "$DRY_RUN" = 1 ] && args+=(--dry-run)
  for s in "${SETS[@]}"; do args+=(--set "$s"); done
  [ -n "$RANK_TABLE" ] && echo "note: --backend cpu ignores the rank table (msrun numbers the CPU workers)" >&2
  exec "$HERE/run_msrun.sh" "${args[@]}"
fi
[ "$BACKEND" = "ascend" ] || die "--backend '$BACKEND': use ascend or cpu"
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

env_line() {  # the exact environment and command of local rank index $1
  printf 'RANK_TABLE_FILE=%q RANK_ID=%q DEVICE_ID=%q RANK_SIZE=%q' \
    "$TABLE_ABS" "${RANKS[$1]}" "${DEVICES[$1]}" "$RANK_SIZE"
  printf ' %q' "${cmd[@]}"
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
  RANK_TABLE_FILE="$TABLE_ABS" RANK_ID="$r" DEVICE_ID="${DEVICES[$i]}" RANK_SIZE="$RANK_SIZE" \
    "${SETSID[@]}" "${cmd[@]}" > "$RUN_DIR/rank_${r}.log" 2>&1 &
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
