#!/usr/bin/env bash
# Set everything up and run the demo: a narrated payment flow through every
# capability of the extension.  Leaves a scratch cluster running.
#
#   scripts/demo.sh          install, build, start the cluster, run the demo
#   scripts/demo.sh stop     stop the demo cluster
#
# Safe to run again: it reinstalls, restarts the cluster and recreates the
# demo database.
source "$(dirname "$0")/lib.sh"

DEMO_DIR="$SCRATCH/demo"
DEMO_PORT=${PAYMENTS_DEMO_PORT:-55432}
DEMO_DB=payments_demo

if [ "${1:-}" = stop ]; then
	export PATH="$("$PG_CONFIG" --bindir):$PATH"
	stop_cluster "$DEMO_DIR"
	echo "demo cluster stopped"
	exit 0
fi

setup_all
say "starting the demo cluster in $DEMO_DIR (port $DEMO_PORT)"
start_cluster "$DEMO_DIR" "$DEMO_PORT"

PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h "$DEMO_DIR" -p "$DEMO_PORT" -U postgres)
as_user "${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS $DEMO_DB WITH (FORCE)" -c "CREATE DATABASE $DEMO_DB"

# One demo step per capability, run in name order: a .sql step by psql, a
# .sh step (one that needs more than psql, such as an HTTP receiver) as a
# program, with the same connection settings.
STEP_ENV=(env PGHOST="$DEMO_DIR" PGPORT="$DEMO_PORT" PGUSER=postgres PGDATABASE="$DEMO_DB")
for step in "$SCRATCH"/src/demo/[0-9]*; do
	case "$step" in
	*.sql) as_user "${STEP_ENV[@]}" "${PSQL[@]}" -d "$DEMO_DB" -f "$step" ;;
	*.sh) as_user "${STEP_ENV[@]}" "$step" ;;
	esac
done

cat <<MSG

The demo cluster is still running.  Connect with:
    psql -h $DEMO_DIR -p $DEMO_PORT -U postgres $DEMO_DB
Stop it with:
    scripts/demo.sh stop
MSG
