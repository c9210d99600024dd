# shellcheck shell=bash
# Progress lines for a person, sourced by setup.sh and run.sh: "run.sh [12s] training ..." on stderr, the
# seconds counted from the first script of the run (PROGRESS_START is passed on to the scripts it calls).
PROGRESS_START=${PROGRESS_START:-$(date +%s)}
export PROGRESS_START

say() {
  echo "$(basename "$0") [$(( $(date +%s) - PROGRESS_START ))s] $*" >&2
}

# with_heartbeat WHAT CMD...: run CMD, saying "still WHAT" every HEARTBEAT_SECONDS (default 15) while it runs.
with_heartbeat() {
  local what=$1 started beat rc=0
  shift
  started=$(date +%s)
  ( while sleep "${HEARTBEAT_SECONDS:-15}"; do say "... still $what ($(( $(date +%s) - started ))s)"; done ) &
  beat=$!
  "$@" || rc=$?
  kill "$beat" 2>/dev/null || true
  wait "$beat" 2>/dev/null || true
  return "$rc"
}
