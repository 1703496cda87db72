#!/bin/bash
# Run a latency-sensitive measurement on a shared machine with the project's own background
# jobs paused: SIGSTOP the processes listed in $RD_BG_PIDS (default work/bg.pids: one pid per
# line; their children and grandchildren too) for the duration of CMD, then SIGCONT them.
# Serialised with flock, so two measurements never overlap. Other users' jobs keep running,
# so figures taken this way are still only as quiet as the machine.
#   eval/bench/quiet.sh CMD ARGS...      (keep CMD short: a few minutes at most)
exec 9>/tmp/rd-quiet.lock
flock 9
LIST=${RD_BG_PIDS:-$(dirname "$0")/../../work/bg.pids}
PIDS=""
if [ -f "$LIST" ]; then
  for p in $(cat "$LIST"); do
    if kill -0 "$p" 2>/dev/null; then PIDS="$PIDS $p $(pgrep -P "$p" | tr '\n' ' ')"; fi
  done
fi
ALL="$PIDS"; for p in $PIDS; do ALL="$ALL $(pgrep -P "$p" | tr '\n' ' ')"; done
[ -n "${ALL// /}" ] && kill -STOP $ALL 2>/dev/null
trap '[ -n "${ALL// /}" ] && kill -CONT $ALL 2>/dev/null' EXIT
sleep 1
"$@"
