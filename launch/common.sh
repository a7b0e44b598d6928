# shellcheck shell=bash
# shellcheck disable=SC2034  # the variables set here are read by the launchers that source this file
# The launchers' shared prelude, sourced by run_distributed.sh and run_msrun.sh: the options both
# take, the usage text (each script's header comment), error handling and the HCCL environment.
#
# A launcher sets its own defaults, defines `parse_own` (consume one of its own options: set
# SHIFT to the words used, 0 if the option is not its), then calls `parse_args "$@"` and
# `check_common`.

CONFIG="" BACKEND="ascend" DRY_RUN=0
PY="${PYTHON:-python3}"
SETS=()
# HCCL waits: links between all ranks are built at start-up (HCCL_CONNECT_TIMEOUT, CANN default
# 120 s, range 120-7200) and every collective waits for the slowest rank (HCCL_EXEC_TIMEOUT, CANN
# default 1836 s; on 910A rounded down to a multiple of 68 s, at most 17340). Ranks reach their
# first collective after compiling their stage's graph, which for a large layout takes minutes and
# differs between stages, so the defaults here are longer. An exported value is kept.
HCCL_CONNECT="${HCCL_CONNECT_TIMEOUT:-1200}"
HCCL_EXEC="${HCCL_EXEC_TIMEOUT:-7200}"
SHIFT=0

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit "${1:-2}"; }
die() { echo "error: $*" >&2; exit 2; }

parse_common() {  # one shared option at "$1"; sets SHIFT (0: not a shared option)
  SHIFT=0
  case "$1" in
    --config) CONFIG="${2:?--config needs a file}"; SHIFT=2 ;;
    --set) SETS+=("${2:?--set needs KEY=VALUE}"); SHIFT=2 ;;
    --backend) BACKEND="${2:?--backend needs ascend or cpu}"; SHIFT=2 ;;
    --python) PY="${2:?--python needs an interpreter}"; SHIFT=2 ;;
    --hccl-connect-timeout) HCCL_CONNECT="${2:?$1 needs seconds}"; SHIFT=2 ;;
    --hccl-exec-timeout) HCCL_EXEC="${2:?$1 needs seconds}"; SHIFT=2 ;;
    --dry-run) DRY_RUN=1; SHIFT=1 ;;
    -h|--help) usage 0 ;;
  esac
}

parse_args() {
  while [ $# -gt 0 ]; do
    parse_common "$@"
    [ "$SHIFT" -gt 0 ] || parse_own "$@"
    [ "$SHIFT" -gt 0 ] || die "unknown argument '$1' (see --help)"
    shift "$SHIFT"
  done
}

is_int() { [[ "$1" =~ ^-?[0-9]+$ ]]; }

check_common() {
  [ -n "$CONFIG" ] || die "--config is required"
  case "$BACKEND" in ascend|cpu) ;; *) die "--backend '$BACKEND': use ascend or cpu" ;; esac
  if ! { is_int "$HCCL_CONNECT" && [ "$HCCL_CONNECT" -ge 120 ] && [ "$HCCL_CONNECT" -le 7200 ]; }; then
    die "--hccl-connect-timeout (HCCL_CONNECT_TIMEOUT) '$HCCL_CONNECT': use whole seconds in 120..7200"
  fi
  if ! { is_int "$HCCL_EXEC" && [ "$HCCL_EXEC" -ge 68 ] && [ "$HCCL_EXEC" -le 17340 ]; }; then
    die "--hccl-exec-timeout (HCCL_EXEC_TIMEOUT) '$HCCL_EXEC': use whole seconds in 68..17340"
  fi
}

hccl_env() {  # the HCCL variables for an Ascend rank, as NAME=VALUE words
  [ "$BACKEND" = ascend ] || return 0
  printf 'HCCL_CONNECT_TIMEOUT=%s\nHCCL_EXEC_TIMEOUT=%s\n' "$HCCL_CONNECT" "$HCCL_EXEC"
}
