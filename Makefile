# Makefile for the payments extension (PGXS)
#
#   make                 build
#   make install         install into the PostgreSQL that pg_config names
#   make test            every suite, each against its own scratch cluster
#                        started with shared_preload_libraries = 'payments':
#   make test-regress    pg_regress tests (sql/, expected/)
#   make test-isolation  isolation specs (test/isolation/)
#   make test-tap        TAP tests (test/t/)
#
# scripts/test.sh is the one command that installs what is missing, builds,
# installs and runs all of them as a non-root user; see README.md.

EXTENSION = payments
EXTVERSION = $(shell sed -n "s/^default_version = '\(.*\)'/\1/p" $(srcdir)/$(EXTENSION).control)

MODULE_big = payments
OBJS = \
	src/payments.o \
	src/owner_rights.o \
	src/extension_catalog.o \
	src/citus_delegation.o \
	src/citus_shards.o \
	src/citus_tables.o \
	src/fingerprint.o \
	src/args.o \
	src/spi_util.o \
	src/direct_write.o \
	src/key_lock.o \
	src/idempotency.o \
	src/reservation.o \
	src/reservation_holds.o \
	src/reservation_slots.o \
	src/reservation_tables.o \
	src/reservation_citus.o \
	src/state_machine.o \
	src/state_guard.o \
	src/state_guard_ddl.o \
	src/worker_shmem.o \
	src/launcher.o \
	src/worker.o \
	src/worker_status.o \
	src/compensation.o \
	src/compensation_rights.o \
	src/compensation_external.o \
	src/compensation_run.o \
	src/compensation_citus.o \
	src/callback_keys.o \
	src/callback_signature.o \
	src/callback_verify.o \
	src/callback_failures.o \
	src/callback_routes.o \
	src/callback_receive.o \
	src/callback_expectations.o \
	src/reconciliation_define.o \
	src/provider_statement.o \
	src/reconciliation_run.o \
	src/reconciliation_heal.o \
	src/tcc_fence.o \
	src/saga.o \
	src/outbox_send.o \
	src/outbox.o \
	src/outbox_operator.o \
	src/outbox_notify.o \
	src/inbox.o \
	src/fault.o \
	src/check_define.o \
	src/check_run.o \
	src/retention.o

# src/sql/ holds everything CREATE EXTENSION and ALTER EXTENSION run.  The
# current version's install script is assembled from one fragment per
# capability, in this order: the schema first, the privileges last.  Released
# install scripts and the upgrade steps between versions are kept as they
# shipped and never change.
SQL_FRAGMENTS = \
	src/sql/00_schema.sql \
	src/sql/10_idempotency.sql \
	src/sql/20_reservation.sql \
	src/sql/30_state_guard.sql \
	src/sql/40_worker.sql \
	src/sql/50_compensation.sql \
	src/sql/60_callbacks.sql \
	src/sql/70_reconciliation.sql \
	src/sql/80_tcc.sql \
	src/sql/82_outbox.sql \
	src/sql/85_sagas.sql \
	src/sql/86_citus.sql \
	src/sql/87_faults.sql \
	src/sql/88_checks.sql \
	src/sql/89_lifecycle.sql \
	src/sql/90_privileges.sql

# The update step from the last release is assembled too, until it ships:
# the schema checks, what changes in objects of the last release, the
# fragments of what is new, and the privileges, which
# are written to be run again.  It ends by granting USAGE on the schema
# anew, which tells every session that the schema changed (see
# test/t/911_upgrade_hostile.pl).
UPDATE_FROM = 0.2.0
UPDATE_FRAGMENTS = \
	src/sql/00_schema.sql \
	src/sql/update-$(UPDATE_FROM)--$(EXTVERSION).sql \
	src/sql/40_worker.sql \
	src/sql/60_callbacks.sql \
	src/sql/70_reconciliation.sql \
	src/sql/80_tcc.sql \
	src/sql/82_outbox.sql \
	src/sql/85_sagas.sql \
	src/sql/86_citus.sql \
	src/sql/87_faults.sql \
	src/sql/88_checks.sql \
	src/sql/89_lifecycle.sql \
	src/sql/90_privileges.sql

DATA_built = \
	src/sql/$(EXTENSION)--$(EXTVERSION).sql \
	src/sql/$(EXTENSION)--$(UPDATE_FROM)--$(EXTVERSION).sql
DATA = \
	src/sql/$(EXTENSION)--0.1.0.sql \
	src/sql/$(EXTENSION)--0.2.0.sql \
	src/sql/$(EXTENSION)--0.1.0--0.2.0.sql
PG_CPPFLAGS = -I$(srcdir)/src -DPAYMENTS_VERSION=\"$(EXTVERSION)\"
SHLIB_LINK += -lcrypto

REGRESS = \
	idempotency \
	idempotency_errors \
	idempotency_ttl \
	idempotency_scopes \
	reservation \
	distribute \
	state_guard \
	compensation \
	compensation_errors \
	compensation_rights \
	worker \
	retention \
	privileges \
	extension_schema \
	compensation_handlers \
	callback \
	callback_errors \
	callback_rights \
	callback_signatures \
	reconciliation \
	reconciliation_errors \
	reconciliation_rights \
	reconciliation_attack \
	reconciliation_attack2 \
	tcc \
	compensation_chain \
	saga \
	saga_attack \
	fault \
	check \
	outbox \
	outbox_errors
REGRESS_OPTS = --no-locale --encoding=UTF8

ISOLATION = \
	idempotency_race \
	idempotency_wait \
	idempotency_scopes \
	reservation_last_unit \
	reservation_no_deadlock \
	reservation_confirm_release \
	reservation_confirm_expire \
	reservation_adjust_reserve \
	reservation_hot_slots \
	state_guard_race \
	state_guard_redefine \
	state_guard_partition_move \
	state_guard_definer \
	compensation_claim \
	compensation_dedup \
	compensation_cancel \
	compensation_skip_locked \
	compensation_rights \
	compensation_unregister \
	callback_same_event \
	callback_stale_read \
	callback_route_race \
	callback_expect_race \
	reconciliation_concurrent_runs \
	reconciliation_heal_race \
	statement_close_race \
	tcc_fence_race \
	tcc_fence_settled \
	saga_race \
	compensation_chain_race \
	check_no_block \
	outbox_key_order \
	outbox_notify \
	outbox_unready_race \
	inbox_receive_race
ISOLATION_OPTS = --inputdir=test/isolation --load-extension=$(EXTENSION) --no-locale --encoding=UTF8

TAP_TESTS = 1
PROVE_TESTS = test/t/*.pl

# pg_regress and isolation suites get scratch clusters of their own
# (test/regress.conf); TAP tests configure the clusters they create.
TEST_CONF = $(srcdir)/test/regress.conf

# make installcheck runs every suite against the server that PGHOST and
# PGPORT name, which must be configured as test/regress.conf says: the
# library preloaded and the worker off, or the worker would expire and
# purge rows that the tests set up to expire by hand.
REGRESS_PREP = installcheck-server

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# Without --enable-depend PGXS rebuilds an object only when its .c file
# changes: a changed header (a shared struct) must rebuild every object.
$(OBJS): $(wildcard $(srcdir)/src/*.h)

# A VPATH build (pg_buildext builds in an empty build-<version> directory)
# needs the directories the objects and the built install script go to.
ifdef VPATH
$(shell mkdir -p src/sql)
endif

# The TAP tests share test/t/PaymentsNode.pm (prove runs in $(srcdir)).
override PROVE_FLAGS += -I test/t

src/sql/$(EXTENSION)--$(EXTVERSION).sql: $(SQL_FRAGMENTS)
	( printf '%s\n' '-- complain if script is sourced in psql, rather than via CREATE EXTENSION' \
	  '\echo Use "CREATE EXTENSION $(EXTENSION)" to load this file. \quit'; \
	  for f in $(SQL_FRAGMENTS); do printf '\n-- %s\n' "$$f"; cat "$(srcdir)/$$f"; done ) > $@

src/sql/$(EXTENSION)--$(UPDATE_FROM)--$(EXTVERSION).sql: $(UPDATE_FRAGMENTS)
	( printf '%s\n' '-- complain if script is sourced in psql, rather than via ALTER EXTENSION' \
	  '\echo Use "ALTER EXTENSION $(EXTENSION) UPDATE TO '"'"'$(EXTVERSION)'"'"'" to load this file. \quit'; \
	  for f in $(UPDATE_FRAGMENTS); do printf '\n-- %s\n' "$$f"; cat "$(srcdir)/$$f"; done; \
	  printf '\n%s\n' 'GRANT USAGE ON SCHEMA @extschema@ TO payments_app;' ) > $@

.PHONY: test test-regress test-isolation test-tap installcheck-server
test: test-regress test-isolation test-tap

test-regress:
	$(pg_regress_installcheck) --temp-instance=./tmp_check_regress \
		--temp-config=$(TEST_CONF) $(REGRESS_OPTS) $(REGRESS)

test-isolation:
	$(pg_isolation_regress_installcheck) --temp-instance=./tmp_check_iso \
		--temp-config=$(TEST_CONF) $(ISOLATION_OPTS) $(ISOLATION)

# The upgrade test (test/t/910_upgrade.pl) runs the regression suite again.
test-tap: export PAYMENTS_REGRESS := $(REGRESS)
test-tap:
	$(prove_installcheck)

EXTRA_CLEAN = output_iso tmp_check_regress tmp_check_iso

installcheck-server:
	@"$(bindir)/psql" -X -At -d postgres \
		-c "SELECT current_setting('payments.worker_enabled', true) = 'off'" 2>/dev/null | grep -qx t || \
		{ echo "make installcheck needs a running server with the settings of test/regress.conf:"; \
		  echo "shared_preload_libraries = 'payments' and payments.worker_enabled = off"; exit 1; }
