#!/usr/bin/env bash
# The Debian package, tested as a DBA would use it: build it from a copy of
# the tree with debian/ (pg_buildext, as PostgreSQL's own Debian packaging
# builds extensions), install it into the system's PostgreSQL, create the
# extension from it on a scratch cluster that preloads the library, and see
# the worker start from the packaged library.
#
# Prints one "PASS: ..." or "FAIL: ..." line per check (scripts/test.sh
# counts them) and exits non-zero on any failure; prints "SKIP: ..." and
# exits 0 when it cannot run: not root, or the packaging tools cannot be
# installed.
#
# The package replaces whatever `make install` put in the system's
# PostgreSQL, so the files it would replace are saved first, and put back
# after the package is purged: the machine is left as it was found, with the
# library the test command built still installed.  An interrupted run leaves
# the saved files and a marker behind; the next run puts them back first.

source "$(dirname "$0")/../../scripts/lib.sh"

PGVERSION=$(cat "$REPO_DIR/debian/pgversions")
PACKAGE=postgresql-$PGVERSION-payments
# The upstream part of the Debian version (0.2.0-1 -> 0.2.0).
VERSION=$(sed -n '1s/^[^ ]* (\(.*\)-[^-]*).*/\1/p' "$REPO_DIR/debian/changelog")
PG_BIN=/usr/lib/postgresql/$PGVERSION/bin
WORK="$SCRATCH/package"
CLUSTER="$WORK/cluster"
PORT=${PAYMENTS_PACKAGE_PORT:-55434}
SAVED="$WORK/saved.tar"
MARKER="$WORK/installed-by-test"
TOOLS="dpkg-dev debhelper fakeroot build-essential libssl-dev postgresql-$PGVERSION postgresql-server-dev-all"

# Only the system's PostgreSQL and the package's own build settings count.
export PATH="$PG_BIN:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
unset PG_CONFIG PGHOST PGPORT PGDATA PGUSER PGDATABASE MAKEFLAGS MAKELEVEL

failures=0
pass() { echo "PASS: $*"; }
fail() {
	echo "FAIL: $*"
	failures=$((failures + 1))
}
skip() {
	echo "SKIP: package test: $*"
	exit 0
}
# show LOG: the end of a step's log, after its FAIL line.
show() { sed 's/^/    /' "$1" | tail -n 40; }
# depends_on PACKAGE: the built package's Depends names PACKAGE.
# (No reader in these pipelines stops early: under pipefail the writer's
# SIGPIPE would count as a failure.)
depends_on() { dpkg-deb -f "$DEB" Depends | grep -E "(^|, )$1( |,|$)" >/dev/null; }
# installed PACKAGE: dpkg has PACKAGE installed.
installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]; }

psql_pkg() {
	as_user psql -h "$CLUSTER" -p "$PORT" -U postgres -XAtq -v ON_ERROR_STOP=1 "$@"
}

[ "$(id -u)" -eq 0 ] || skip "not root: installing a package needs root"

mkdir -p "$WORK"
chown "$RUN_USER" "$WORK"

missing=""
for p in $TOOLS; do
	installed "$p" || missing="$missing $p"
done
if [ -n "$missing" ]; then
	say "installing$missing"
	export DEBIAN_FRONTEND=noninteractive
	# shellcheck disable=SC2086
	{ apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing; } \
		>"$WORK/tools.log" 2>&1 ||
		skip "could not install$missing (see $WORK/tools.log)"
fi

# undo: stop the cluster, purge the package if this test installed it, and
# put back the files it replaced.  Run at the start (after an interrupted
# run) and at the end.
undo() {
	if [ -f "$CLUSTER/data/postmaster.pid" ]; then
		as_user pg_ctl -D "$CLUSTER/data" -w stop -m fast >/dev/null 2>&1 || true
	fi
	if [ -f "$MARKER" ]; then
		dpkg --purge "$PACKAGE" >"$WORK/purge.log" 2>&1 || return 1
		if [ -f "$SAVED" ]; then
			tar -C / -xpf "$SAVED" || return 1
		fi
		rm -f "$MARKER"
	fi
}

# A command that fails outside a check ends the script (set -e): say so in
# a line that counts, and leave the machine as it was found.
on_exit() {
	local status=$1
	trap - EXIT
	if [ "$status" -ne 0 ] && [ "$failures" -eq 0 ]; then
		echo "FAIL: the package test stopped early (exit $status); see $WORK"
	fi
	undo || echo "FAIL: $PACKAGE purged and the files it replaced put back"
	exit "$status"
}

if ! undo; then
	fail "$PACKAGE left by an earlier run purged and the files it replaced put back"
	show "$WORK/purge.log"
	exit 1
fi
if installed "$PACKAGE"; then
	skip "$PACKAGE is installed, and not by this test: leaving it alone"
fi
trap 'on_exit $?' EXIT
rm -rf "$WORK/build" "$CLUSTER" "$SAVED"

# --- build, from a copy of the tree, as the run user ---

say "building $PACKAGE $VERSION from a copy of the tree"
SRC="$WORK/build/payments-$VERSION"
as_user mkdir -p "$SRC"
(cd "$REPO_DIR" && tar --exclude=.git --exclude='./tmp_check*' --exclude=./results \
	--exclude=./output_iso --exclude='./build-*' --exclude=./debian/.debhelper \
	--exclude='*.o' --exclude='*.so' --exclude='*.bc' -cf - .) |
	as_user tar -xf - -C "$SRC"
if (cd "$SRC" && as_user dpkg-buildpackage -us -uc -b) >"$WORK/build.log" 2>&1; then
	pass "dpkg-buildpackage -us -uc -b builds $PACKAGE"
else
	fail "dpkg-buildpackage -us -uc -b builds $PACKAGE"
	show "$WORK/build.log"
	exit 1
fi
DEB=$(ls "$WORK/build/${PACKAGE}_${VERSION}"-*_"$(dpkg --print-architecture)".deb)

# The package depends on the server it was built for and on the package of
# the libcrypto the library links to.
as_user dpkg-deb -x "$DEB" "$WORK/build/contents"
libdir_in_deb="$WORK/build/contents/usr/lib/postgresql/$PGVERSION/lib"
crypto=$(readelf -d "$libdir_in_deb/payments.so" | sed -n 's/.*NEEDED.*\[\(libcrypto[^]]*\)\].*/\1/p')
crypto_path=$(ldconfig -p | awk -v so="$crypto" '$1 == so && !found { print $NF; found = 1 }')
libssl=$(dpkg -S "$(realpath "${crypto_path:-/nonexistent}")" 2>/dev/null | sed -n '1s/[:,].*//p' || true)
if [ -n "$libssl" ] && depends_on "postgresql-$PGVERSION" && depends_on "$libssl"; then
	pass "$PACKAGE depends on postgresql-$PGVERSION and $libssl ($crypto)"
else
	fail "$PACKAGE depends on postgresql-$PGVERSION and the libssl of $crypto"
	echo "    Depends: $(dpkg-deb -f "$DEB" Depends); ${crypto:-libcrypto} is in ${libssl:-no package}"
fi

# --- install, keeping what make install had put there ---

# The package's files that exist outside any package now (make install's)
# are saved; dpkg replaces them, and undo puts them back after the purge.
: >"$WORK/replaced"
while read -r f; do
	f=${f#.}
	if [ -f "$f" ] && ! dpkg -S "$f" >/dev/null 2>&1; then
		echo "${f#/}" >>"$WORK/replaced"
	fi
done < <(dpkg-deb --fsys-tarfile "$DEB" | tar -t | grep -v '/$')
tar -C / -cpf "$SAVED" -T "$WORK/replaced"

touch "$MARKER"
if DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$DEB" \
	>"$WORK/install.log" 2>&1; then
	pass "$PACKAGE installs"
else
	fail "$PACKAGE installs"
	show "$WORK/install.log"
	exit 1
fi

libdir=$("$PG_BIN/pg_config" --pkglibdir)
owner=$(dpkg -S "$libdir/payments.so" 2>/dev/null | sed 's/:.*//' || true)
if [ "$owner" = "$PACKAGE" ] && [ -z "$(dpkg --verify "$PACKAGE")" ]; then
	pass "$libdir/payments.so is $PACKAGE's, and its files are as packaged"
else
	fail "$libdir/payments.so is $PACKAGE's, and its files are as packaged"
	echo "    dpkg -S: ${owner:-no package}"
	dpkg --verify "$PACKAGE" | sed 's/^/    /'
fi

# --- the extension from the package ---

say "starting a scratch cluster that preloads payments (port $PORT)"
if ! (start_cluster "$CLUSTER" "$PORT") >"$WORK/cluster.log" 2>&1; then
	fail "a scratch cluster that preloads payments starts"
	show "$WORK/cluster.log"
	show "$CLUSTER/server.log"
	exit 1
fi

if psql_pkg -d postgres -c "CREATE DATABASE payments_package" >"$WORK/psql.log" 2>&1 &&
	psql_pkg -d payments_package -c "CREATE EXTENSION payments" >>"$WORK/psql.log" 2>&1; then
	pass "CREATE EXTENSION payments"
else
	fail "CREATE EXTENSION payments"
	show "$WORK/psql.log"
	exit 1
fi

installed=$(psql_pkg -d payments_package -c "SELECT extversion FROM pg_extension WHERE extname = 'payments'" || true)
if [ "$installed" = "$VERSION" ]; then
	pass "the extension's version is the package's ($VERSION)"
else
	fail "the extension's version is the package's ($VERSION): got '$installed'"
fi

# The launcher starts the database's worker once CREATE EXTENSION commits;
# wait for it the way the TAP tests' poll_query_until does.
worker=""
for _ in $(seq 1 300); do
	worker=$(psql_pkg -d payments_package -c "SELECT s.pid FROM payments.worker_status() s
		JOIN pg_stat_activity a ON a.pid = s.pid AND a.backend_type = 'payments worker'
		WHERE s.state IN ('idle', 'running')" || true)
	[ -n "$worker" ] && break
	sleep 0.2
done
if [ -n "$worker" ]; then
	pass "the worker of the database starts (pid $worker)"
	# The library the worker has mapped is the one the package installed.
	mapped=$(awk '$NF ~ /\/payments\.so$/ { print $NF; exit }' "/proc/$worker/maps" || true)
	mapped_owner=$(dpkg -S "${mapped:-/nonexistent}" 2>/dev/null | sed 's/:.*//' || true)
	if [ "$mapped_owner" = "$PACKAGE" ]; then
		pass "the worker runs $mapped from $PACKAGE"
	else
		fail "the worker runs payments.so from $PACKAGE: it runs '${mapped:-none}' (${mapped_owner:-no package})"
	fi
else
	fail "the worker of the database starts"
	show "$CLUSTER/server.log"
fi

# --- leave the machine as it was found ---

as_user pg_ctl -D "$CLUSTER/data" -w stop -m fast >/dev/null
trap - EXIT
if undo && ! installed "$PACKAGE" &&
	tar -C / -df "$SAVED" >"$WORK/restore.log" 2>&1; then
	pass "$PACKAGE purged and the $(wc -l <"$WORK/replaced") files it replaced put back"
else
	fail "$PACKAGE purged and the files it replaced put back"
	show "$WORK/restore.log"
fi

[ "$failures" -eq 0 ]
