# Shared set-up for scripts/demo.sh, scripts/test.sh and test/bench/run.sh.
# Sourced, not run.  Every step is safe to repeat.
#
# Environment (all optional):
#   PAYMENTS_SCRATCH  scratch directory (default /var/tmp/payments)
#   PAYMENTS_USER     non-root user that runs PostgreSQL when invoked as root
#                     (default postgres, created by the postgresql-15 package)
#   PG_CONFIG         pg_config of the PostgreSQL to build against
#                     (default /usr/lib/postgresql/15/bin/pg_config)

set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCRATCH=${PAYMENTS_SCRATCH:-/var/tmp/payments}
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
PACKAGES="postgresql-15 postgresql-server-dev-15 libssl-dev libipc-run-perl build-essential
	python3 python3-psycopg2 curl openssl"

say() { printf '\n==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

if [ "$(id -u)" -eq 0 ]; then
	RUN_USER=${PAYMENTS_USER:-postgres}
else
	RUN_USER=$(id -un)
fi

# Run a command as the non-root user that owns the scratch directory.
as_user() {
	if [ "$(id -u)" -eq 0 ]; then
		runuser -u "$RUN_USER" -- env PATH="$PATH" "$@"
	else
		"$@"
	fi
}

# Install the Debian packages that are missing (root only).
ensure_packages() {
	local missing=""
	for p in $PACKAGES; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
			missing="$missing $p"
	done
	[ -z "$missing" ] && return 0
	[ "$(id -u)" -eq 0 ] || die "missing packages:$missing (run as root to install them)"
	say "installing$missing"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# shellcheck disable=SC2086
	apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

# Copy the source tree to $SCRATCH/src, owned by the run user, so that the
# build and the test suites (which write results beside the sources) never
# need root and never litter the clone.
prepare_tree() {
	mkdir -p "$SCRATCH"
	if [ "$(id -u)" -eq 0 ]; then
		id "$RUN_USER" >/dev/null 2>&1 ||
			useradd --system --home-dir "$SCRATCH" --shell /bin/bash "$RUN_USER"
		chown "$RUN_USER" "$SCRATCH"
	fi
	rm -rf "$SCRATCH/src"
	mkdir -p "$SCRATCH/src"
	(cd "$REPO_DIR" && tar --exclude=.git --exclude='./tmp_check*' \
		--exclude=./results --exclude=./output_iso --exclude='*.o' --exclude='*.so' \
		-cf - .) | tar -xf - -C "$SCRATCH/src"
	export_releases
	[ "$(id -u)" -eq 0 ] && chown -R "$RUN_USER" "$SCRATCH/src" "$SCRATCH/releases"
	return 0
}

# The sources of every released version (test/t/releases), exported from
# the git history to $SCRATCH/releases for the upgrade test, which skips
# with a message when they are missing (a tarball, a shallow clone).
export_releases() {
	local version commit
	rm -rf "$SCRATCH/releases"
	mkdir -p "$SCRATCH/releases"
	command -v git >/dev/null || return 0
	while read -r version commit; do
		case "$version" in '' | '#'*) continue ;; esac
		mkdir -p "$SCRATCH/releases/$version"
		git -c safe.directory='*' -C "$REPO_DIR" archive "$commit" 2>/dev/null |
			tar -xf - -C "$SCRATCH/releases/$version" 2>/dev/null ||
			rm -rf "$SCRATCH/releases/$version"
	done <"$REPO_DIR/test/t/releases"
}

# Build as the run user, install as root.
build_and_install() {
	# BUILD_COPT, if set, is added to the server's compiler flags
	# (scripts/test.sh: -Werror).
	say "building payments${BUILD_COPT:+ with COPT=$BUILD_COPT}"
	as_user make -C "$SCRATCH/src" -s PG_CONFIG="$PG_CONFIG" ${BUILD_COPT:+COPT="$BUILD_COPT"} >/dev/null ||
		die "the build failed"
	say "installing payments into $("$PG_CONFIG" --pkglibdir)"
	make -C "$SCRATCH/src" -s PG_CONFIG="$PG_CONFIG" install >/dev/null
}

setup_all() {
	ensure_packages
	PG_BINDIR=$("$PG_CONFIG" --bindir)
	export PATH="$PG_BINDIR:$PATH"
	prepare_tree
	build_and_install
}

# start_cluster DIR PORT: a scratch cluster with the worker preloaded, owned
# by the run user, reachable through a Unix socket in DIR.  An existing
# cluster in DIR is restarted so that it loads the freshly installed library.
start_cluster() {
	local dir=$1 port=$2
	if [ ! -f "$dir/data/PG_VERSION" ]; then
		as_user mkdir -p "$dir"
		as_user initdb -D "$dir/data" -U postgres --auth=trust --no-locale -E UTF8 >/dev/null
		cat "$REPO_DIR/test/payments.conf" - <<-CONF | as_user tee -a "$dir/data/postgresql.conf" >/dev/null
			port = $port
			listen_addresses = ''
			unix_socket_directories = '$dir'
			max_connections = 300
		CONF
	fi
	as_user pg_ctl -D "$dir/data" -l "$dir/server.log" -w stop -m fast >/dev/null 2>&1 || true
	# The port on the command line wins over the one an earlier run wrote.
	as_user pg_ctl -D "$dir/data" -l "$dir/server.log" -o "-p $port" -w start >/dev/null ||
		die "could not start the cluster in $dir (see $dir/server.log)"
}

stop_cluster() {
	local dir=$1
	[ -f "$dir/data/postmaster.pid" ] || return 0
	as_user pg_ctl -D "$dir/data" -w stop -m fast
}
