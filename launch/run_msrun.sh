#!/usr/bin/env bash
# Start training under MindSpore's msrun (dynamic cluster: no rank table). Single node:
#   launch/run_msrun.sh --config RUN.yaml [--worker-num N] [--set KEY=VALUE]... [--dry-run]
# Multi-node (run on every node, same --worker-num/--master-addr/--master-port, own --node-rank):
#   launch/run_msrun.sh --config RUN.yaml --worker-num 16 --local-worker-num 8 \
#       --master-addr 10.0.0.1 --master-port 8118 --node-rank 0 [--log-dir DIR] [--cluster-timeout S]
# CPU (data-parallel CPU workers, e.g. CI or a laptop):
#   launch/run_msrun.sh --backend cpu --config RUN.yaml --worker-num 2 --set parallel.dp=2
#
# Defaults: --worker-num = the config's dp*mp*pp, --local-worker-num = --worker-num,
# --master-addr 127.0.0.1, --master-port 8118, --node-rank 0, --cluster-timeout 600,
# --log-dir runs/msrun/<time>. `--backend` sets run.device (ascend -> Ascend, cpu -> CPU).
# Before starting, `python -m pangu_ms preflight` checks that the config validates, that
# the worker count equals dp*mp*pp and that the training data exists. Worker logs:
# DIR/worker_<rank>.log, scheduler log: DIR/scheduler.log.
set -euo pipefail

CONFIG="" BACKEND="ascend" WORKER_NUM="" LOCAL_WORKER_NUM="" MASTER_ADDR="127.0.0.1" MASTER_PORT="8118"
NODE_RANK="0" LOG_DIR="" CLUSTER_TIMEOUT="600" DRY_RUN=0
PY="${PYTHON:-python3}"
SETS=()

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"; exit "${1:-2}"; }
die() { echo "error: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --config) CONFIG="${2:?--config needs a file}"; shift 2 ;;
    --set) SETS+=("${2:?--set needs KEY=VALUE}"); shift 2 ;;
    --backend) BACKEND="${2:?--backend needs ascend or cpu}"; shift 2 ;;
    --worker-num|--workers) WORKER_NUM="${2:?$1 needs a number}"; shift 2 ;;
    --local-worker-num) LOCAL_WORKER_NUM="${2:?--local-worker-num needs a number}"; shift 2 ;;
    --master-addr) MASTER_ADDR="${2:?--master-addr needs an address}"; shift 2 ;;
    --master-port) MASTER_PORT="${2:?--master-port needs a port}"; shift 2 ;;
    --node-rank) NODE_RANK="${2:?--node-rank needs a number}"; shift 2 ;;
    --log-dir) LOG_DIR="${2:?--log-dir needs a directory}"; shift 2 ;;
    --cluster-timeout) CLUSTER_TIMEOUT="${2:?--cluster-timeout needs seconds}"; shift 2 ;;
    --python) PY="${2:?--python needs an interpreter}"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[ -n "$CONFIG" ] || die "--config is required"
case "$BACKEND" in
  ascend) SETS+=("run.device=Ascend") ;;
  cpu) SETS+=("run.device=CPU") ;;
  *) die "--backend '$BACKEND': use ascend or cpu" ;;
esac
for n in "$MASTER_PORT" "$NODE_RANK" "$CLUSTER_TIMEOUT" ${WORKER_NUM:+"$WORKER_NUM"} ${LOCAL_WORKER_NUM:+"$LOCAL_WORKER_NUM"}; do
  [[ "$n" =~ ^-?[0-9]+$ ]] || die "'$n' is not a number"
done
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
cmd=("$MSRUN" "--worker_num=$WORKER_NUM" "--local_worker_num=$LOCAL_WORKER_NUM" "--master_addr=$MASTER_ADDR"
     "--master_port=$MASTER_PORT" "--node_rank=$NODE_RANK" "--log_dir=$LOG_DIR" "--join=True"
     "--cluster_time_out=$CLUSTER_TIMEOUT" python -m pangu_ms pretrain --config "$CONFIG" "${set_args[@]}")

echo "node $NODE_RANK: $LOCAL_WORKER_NUM of $WORKER_NUM workers ($BACKEND), master $MASTER_ADDR:$MASTER_PORT, logs in $LOG_DIR" >&2
if [ "$DRY_RUN" = 1 ]; then
  printf 'GLOG_v=%q PATH=%q:%s' "${GLOG_v:-3}" "$PY_DIR" "\$PATH"
  printf ' %q' "${cmd[@]}"
  printf '\n'
  exit 0
fi

mkdir -p "$LOG_DIR"
export GLOG_v="${GLOG_v:-3}" PATH="$PY_DIR:$PATH"
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
