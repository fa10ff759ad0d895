#!/usr/bin/env bash
# svc.sh PIDFILE EXEC...: systemd's part of a socket-activated service, for machines without
# systemd as PID 1. Run by `systemd-socket-activate -l SOCKET -- svc.sh PIDFILE EXEC...`:
# systemd-socket-activate listens on SOCKET and execs this script at the first connection, with the
# listening socket as fd 3 (LISTEN_FDS=1). This script then does what systemd does with a
# .socket/.service pair: it starts the service (EXEC, the unit's ExecStart=) with fd 3 and
# LISTEN_PID set to the service's own pid, and keeps fd 3 open itself, so the socket stays bound
# and queues callers while the service restarts:
#   SIGHUP   `systemctl try-restart`: stop the service (SIGTERM, wait), start EXEC again, which
#            then runs the binary on disk now (the upgraded one)
#   SIGUSR1  the first half of that restart only: stop the service and keep the socket, until
#   SIGUSR2  starts it again (so a test can call into the gap deterministically)
#   SIGTERM  `systemctl stop` of socket and service: stop the service, exit (closing the socket)
# The service's pid is written to PIDFILE at every start (emptied while it is stopped). A service
# exiting by itself ends this script with its status (Restart=on-failure is not imitated).
set -u
pidfile=$1; shift
[ "${LISTEN_FDS:-}" = 1 ] || { echo "svc.sh: no socket passed (LISTEN_FDS=${LISTEN_FDS:-unset})" >&2; exit 2; }
child=
start() {
    # LISTEN_PID must name the process that receives the socket: the subshell's own pid, kept by exec.
    ( export LISTEN_PID=$BASHPID; exec "$@" ) &
    child=$!
    echo "$child" >"$pidfile"
}
stop() {
    kill -TERM "$child" 2>/dev/null
    wait "$child" 2>/dev/null
    : >"$pidfile"
}
restart=0 pause=0 resume=0 quit=0
trap 'restart=1' HUP
trap 'pause=1' USR1
trap 'resume=1' USR2
trap 'quit=1' TERM INT
start "$@"
while :; do
    wait "$child"
    st=$?
    if [ "$quit" = 1 ]; then stop; exit 0; fi
    if [ "$restart" = 1 ]; then restart=0; stop; start "$@"; continue; fi
    if [ "$pause" = 1 ]; then
        pause=0; stop
        # Signals are handled between the short sleeps.
        while [ "$resume" = 0 ] && [ "$quit" = 0 ]; do sleep 0.05; done
        [ "$quit" = 1 ] && exit 0
        resume=0; start "$@"; continue
    fi
    # wait returned without a signal for us: the service exited on its own.
    kill -0 "$child" 2>/dev/null && continue
    echo "svc.sh: service $1 exited by itself with status $st" >&2
    exit "$st"
done
