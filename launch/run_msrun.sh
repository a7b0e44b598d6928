#!/usr/bin/env bash
# Start training under MindSpore's msrun (dynamic cluster: no rank table). Single node:
#   launch/run_msrun.sh --config RUN.yaml [--worker-num N] [--set KEY=VALUE]... [--dry-run]
# Multi-node (run on every node, same --worker-num/--master-addr/--master-port, own --node-rank):
#   launch/run_msrun.sh --config RUN.yaml --worker-num 16 --local-worker-num 8 \
#       --master-addr 10.0.0.1 --master-port 8118 --node-rank 0 [--log-dir DIR] [--cluster-timeout S]
# Dry run of one rank (MindSpore compiles rank R's graphs and reports its memory; needs the CANN
# toolkit, no NPU; `python -m pangu_ms plan --dry-run-commands` prints one per pipeline stage):
#   launch/run_msrun.sh --config RUN.yaml --sim-level 1 --sim-rank-id R [--set train.steps=1]
# CPU (data-parallel CPU workers, e.g. CI or a laptop):
#   launch/run_msrun.sh --backend cpu --config RUN.yaml --worker-num 2 --set parallel.dp=2
#
# Defaults: --worker-num = the config's dp*mp*pp, --local-worker-num = --worker-num,
# --master-addr 127.0.0.1, --master-port 8118, --node-rank 0, --cluster-timeout 600,
# --log-dir runs/msrun/<time>. `--backend` sets run.device (ascend -> Ascend, cpu -> CPU).
# --bind-core true|false|JSON: msrun's CPU-core binding per worker (JSON: its device -> cores map).
# --rank-table FILE: handed to msrun (--rank_table_file; it helps other features, msrun still
#   builds the cluster itself). --sim-level 0..3, --sim-rank-id R: msrun's dry run.
# --hccl-connect-timeout S (120..7200, default 1200), --hccl-exec-timeout S (68..17340, default
#   7200): HCCL_CONNECT_TIMEOUT / HCCL_EXEC_TIMEOUT for Ascend workers (an exported value is kept).
# Before starting, `python -m pangu_ms preflight` checks that the config validates, that
# the worker count equals dp*mp*pp and that the training data exists. Worker logs:
# DIR/worker_<rank>.log, scheduler log: DIR/scheduler.log.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=launch/common.sh
. "$HERE/common.sh"
WORKER_NUM="" LOCAL_WORKER_NUM="" MASTER_ADDR="127.0.0.1" MASTER_PORT="8118"
NODE_RANK="0" LOG_DIR="" CLUSTER_TIMEOUT="600" BIND_CORE="" SIM_LEVEL="" SIM_RANK_ID="" RANK_TABLE=""

parse_own() {
  case "$1" in
    --worker-num|--workers) WORKER_NUM="${2:?$1 needs a number}"; SHIFT=2 ;;
    --local-worker-num) LOCAL_WORKER_NUM="${2:?--local-worker-num needs a number}"; SHIFT=2 ;;
    --master-addr) MASTER_ADDR="${2:?--master-addr needs an address}"; SHIFT=2 ;;
    --master-port) MASTER_PORT="${2:?--master-port needs a port}"; SHIFT=2 ;;
    --node-rank) NODE_RANK="${2:?--node-rank needs a number}"; SHIFT=2 ;;
    --log-dir) LOG_DIR="${2:?--log-dir needs a directory}"; SHIFT=2 ;;
    --cluster-timeout) CLUSTER_TIMEOUT="${2:?--cluster-timeout needs seconds}"; SHIFT=2 ;;
    --bind-core) BIND_CORE="${2:?--bind-core needs true, false or a JSON map}"; SHIFT=2 ;;
    --sim-level) SIM_LEVEL="${2:?--sim-level needs 0, 1, 2 or 3}"; SHIFT=2 ;;
    --sim-rank-id) SIM_RANK_ID="${2:?--sim-rank-id needs a rank}"; SHIFT=2 ;;
    --rank-table) RANK_TABLE="${2:?--rank-table needs a file}"; SHIFT=2 ;;
  esac
}

parse_args "$@"
check_common
if [ "$BACKEND" = ascend ]; then SETS+=("run.device=Ascend"); else SETS+=("run.device=CPU"); fi
for n in "$MASTER_PORT" "$NODE_RANK" "$CLUSTER_TIMEOUT" ${WORKER_NUM:+"$WORKER_NUM"} ${LOCAL_WORKER_NUM:+"$LOCAL_WORKER_NUM"} \
         ${SIM_RANK_ID:+"$SIM_RANK_ID"}; do
  is_int "$n" || die "'$n' is not a number"
done
case "$SIM_LEVEL" in ""|0|1|2|3) ;; *) die "--sim-level '$SIM_LEVEL': use 0, 1, 2 or 3 (msrun's dry-run levels)" ;; esac
[ -z "$SIM_RANK_ID" ] || [ -n "$SIM_LEVEL" ] || die "--sim-rank-id needs --sim-level (the dry run it selects a rank of)"
[ -z "$SIM_LEVEL" ] || [ "$BACKEND" = ascend ] || die "--sim-level is MindSpore's Ascend dry run: drop --backend cpu"
case "$BIND_CORE" in ""|true|True|false|False|\{*\}) ;;
  *) die "--bind-core '$BIND_CORE': use true, false or a JSON map such as '{\"0\": [\"0-15\"]}'" ;; esac
if [ -n "$RANK_TABLE" ]; then
  [ -f "$RANK_TABLE" ] || die "--rank-table $RANK_TABLE: rank table not found"
  RANK_TABLE="$(cd "$(dirname "$RANK_TABLE")" && pwd)/$(basename "$RANK_TABLE")"
fi
set_args=()
for s in "${SETS[@]}"; do set_args+=(--set "$s"); done

# ---- pre-flight: nothing is started unless every check passes
pf=(--config "$CONFIG" "${set_args[@]}")
[ -n "$WORKER_NUM" ] && pf+=(--workers "$WORKER_NUM")
[ -n "$LOCAL_WORKER_NUM" ] && pf+=(--local-workers "$LOCAL_WORKER_NUM")
if ! plan="$("$PY" -m pangu_ms preflight "${pf[@]}")"; then
  echo "launch aborted: pre-flight checks failed, no process was started" >&2
  exit 2
fi
WORKER_NUM="$(sed -n 's/^RANK_SIZE=//p' <<< "$plan")"
[ -n "$LOCAL_WORKER_NUM" ] || LOCAL_WORKER_NUM="$WORKER_NUM"
[ -n "$LOG_DIR" ] || LOG_DIR="runs/msrun/$(date +%Y%m%d_%H%M%S)"

# msrun starts `python ...` from PATH: put the interpreter that passed pre-flight first
PY_DIR="$(cd "$(dirname "$(command -v "$PY")")" && pwd)"
MSRUN="$PY_DIR/msrun"
[ -x "$MSRUN" ] || MSRUN="$(command -v msrun || true)"
[ -n "$MSRUN" ] || die "msrun not found next to $PY or on PATH: it comes with the mindspore package"
[ -z "$SIM_RANK_ID" ] || LOCAL_WORKER_NUM=1  # msrun starts the one simulated rank
cmd=("$MSRUN" "--worker_num=$WORKER_NUM" "--local_worker_num=$LOCAL_WORKER_NUM" "--master_addr=$MASTER_ADDR"
     "--master_port=$MASTER_PORT" "--node_rank=$NODE_RANK" "--log_dir=$LOG_DIR" "--join=True"
     "--cluster_time_out=$CLUSTER_TIMEOUT")
[ -z "$BIND_CORE" ] || cmd+=("--bind_core=$BIND_CORE")
[ -z "$SIM_LEVEL" ] || cmd+=("--sim_level=$SIM_LEVEL")
[ -z "$SIM_RANK_ID" ] || cmd+=("--sim_rank_id=$SIM_RANK_ID")
[ -z "$RANK_TABLE" ] || cmd+=("--rank_table_file=$RANK_TABLE")
cmd+=(python -m pangu_ms pretrain --config "$CONFIG" "${set_args[@]}")
mapfile -t HCCL_VARS < <(hccl_env)

echo "node $NODE_RANK: $LOCAL_WORKER_NUM of $WORKER_NUM workers ($BACKEND), master $MASTER_ADDR:$MASTER_PORT, logs in $LOG_DIR" >&2
if [ "$DRY_RUN" = 1 ]; then
  printf 'GLOG_v=%q PATH=%q:%s' "${GLOG_v:-3}" "$PY_DIR" "\$PATH"
  [ ${#HCCL_VARS[@]} -eq 0 ] || printf ' %s' "${HCCL_VARS[@]}"
  printf ' %q' "${cmd[@]}"
  printf '\n'
  exit 0
fi

mkdir -p "$LOG_DIR"
export GLOG_v="${GLOG_v:-3}" PATH="$PY_DIR:$PATH"
for v in "${HCCL_VARS[@]}"; do export "${v?}"; done
trap 'echo "interrupted: msrun stops its workers (logs in $LOG_DIR)" >&2' INT TERM
status=0
"${cmd[@]}" || status=$?
if [ "$status" -ne 0 ]; then
  echo "msrun failed with exit code $status; worker logs: $LOG_DIR/worker_*.log, scheduler: $LOG_DIR/scheduler.log" >&2
  for log in "$LOG_DIR"/worker_*.log; do
    [ -f "$log" ] || continue
    if grep -qE "Traceback|^error:|\[ERROR\]" "$log"; then
      echo "  $log:" >&2
      grep -E "^error:|Error|\[ERROR\]" "$log" | tail -n 3 | sed 's/^/    /' >&2 || true
    fi
  done
  exit "$status"
fi
echo "msrun finished: $WORKER_NUM workers; logs in $LOG_DIR" >&2
