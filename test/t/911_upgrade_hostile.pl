# The update from 0.1.0 as a role that prepared the database for it would
# attack it.  0.1.0 accepted states that 0.2.0 refuses on a fresh install;
# the update step (src/sql/payments--0.1.0--0.2.0.sql) must not keep them:
#   A. a "payments" schema owned by the database owner (0.1.0's CREATE
#      EXTENSION reused it): the owner could plant a better-matching
#      overload there that a superuser calling the API runs;
#   B. CREATE on the schema granted to a non-superuser;
#   C. an external-handler registration made under 0.1.0 by a role that
#      does not own the handler (0.1.0 checked only USAGE + EXECUTE): that
#      role could claim and complete the owner's items;
#   E. the schema renamed by its owner and look-alikes put under the old
#      name: the update must not change them instead of the extension's.
# And for every version:
#   D. a session that used the extension before an update step refuses the
#      new schema after it (each step ends by touching the schema's row);
#   F. default privileges of the installing role grant nobody rights on the
#      extension's objects, after a fresh install or an update.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PaymentsNode;

my $node = payments_node('upgrade_hostile', worker_timings => 0);

$node->safe_psql('postgres', q{
	CREATE ROLE dbo LOGIN;
	CREATE ROLE alice LOGIN;
	CREATE ROLE mallory LOGIN;
	CREATE DATABASE owned OWNER dbo;
	CREATE DATABASE granted;
	CREATE DATABASE handlers;
});

# A. The database owner's schema, reused by 0.1.0, survives the update.
$node->safe_psql('owned', 'CREATE SCHEMA payments', extra_params => [ '-U', 'dbo' ]);
$node->safe_psql('owned', "CREATE EXTENSION payments VERSION '0.1.0'");
my ($ret, $out, $err) = $node->psql('owned', 'ALTER EXTENSION payments UPDATE');
my $owner = $node->safe_psql('owned',
	q{SELECT r.rolsuper FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner
	   WHERE n.oid = (SELECT extnamespace FROM pg_extension WHERE extname = 'payments')});
ok($ret != 0 || $owner eq 't',
	'A: the update refuses, or ends with, a schema no non-superuser owns');

if ($ret == 0)
{
	$node->safe_psql('owned', q{
		CREATE FUNCTION payments.stock_set(sku text, on_hand integer)
		  RETURNS void LANGUAGE plpgsql AS $$
		BEGIN
		  IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
		    EXECUTE 'ALTER ROLE dbo SUPERUSER';
		  END IF;
		  PERFORM payments.stock_set(sku, on_hand::bigint, NULL::integer);
		END $$;
	}, extra_params => [ '-U', 'dbo' ]);
	# The README's own call, run by the DBA.
	$node->safe_psql('owned', q{SELECT payments.stock_set('mug', 10)});
	is($node->safe_psql('postgres', q{SELECT rolsuper FROM pg_roles WHERE rolname = 'dbo'}),
		'f', 'A: the database owner does not become superuser after the update');
	$node->safe_psql('postgres', 'ALTER ROLE dbo NOSUPERUSER');
}

# B. CREATE on the schema granted to a non-superuser under 0.1.0.
$node->safe_psql('granted', "CREATE EXTENSION payments VERSION '0.1.0'");
$node->safe_psql('granted', 'GRANT CREATE ON SCHEMA payments TO dbo');
($ret, $out, $err) = $node->psql('granted', 'ALTER EXTENSION payments UPDATE');
my $creators = $node->safe_psql('granted',
	q{SELECT count(*) FROM pg_namespace n, aclexplode(n.nspacl) a
	   JOIN pg_roles r ON r.oid = a.grantee
	  WHERE n.nspname = 'payments' AND a.privilege_type = 'CREATE' AND NOT r.rolsuper});
ok($ret != 0 || $creators eq '0',
	'B: the update refuses, or ends with, a schema no non-superuser may create in');

# C. A 0.1.0 registration by a role that does not own the handler.
$node->safe_psql('handlers', q{
	CREATE EXTENSION payments VERSION '0.1.0';
	GRANT payments_app TO alice, mallory;
	CREATE SCHEMA shop AUTHORIZATION alice;
	GRANT USAGE ON SCHEMA shop TO PUBLIC;
	SET ROLE alice;
	CREATE FUNCTION shop.refund(p jsonb) RETURNS void LANGUAGE sql AS 'SELECT';
	RESET ROLE;
	-- what 0.1.0's register_external_handler wrote when mallory called it
	INSERT INTO payments.external_handlers (handler, registered_by)
	VALUES ('shop.refund(pg_catalog.jsonb)', 'mallory');
	ALTER EXTENSION payments UPDATE;
});
is($node->safe_psql('handlers', 'SELECT count(*) FROM payments.external_handlers'),
	'0', 'C: the update removes a registration by a role that does not own the handler');
$node->safe_psql('handlers',
	q{SELECT payments.enqueue_compensation('shop.refund(jsonb)', '{"order": 7}')},
	extra_params => [ '-U', 'alice' ]);
($ret, $out, $err) = $node->psql('handlers', q{
	SELECT payments.complete_compensation(id, claim_token)
	  FROM payments.claim_compensations('shop.refund(jsonb)', 10, '5 min');
}, extra_params => [ '-U', 'mallory' ]);
isnt($ret, 0,
	"C: a role that does not own alice's handler cannot claim her items after the update");

# D. A session that used the extension sees a later update step: the
# catalog change every step ends with makes it look the version up again.
$node->safe_psql('postgres', 'CREATE EXTENSION payments');
($ret, $out, $err) = $node->psql('postgres', q{
	SELECT payments.stock_set('cached', 1);
	UPDATE pg_extension SET extversion = '99.0.0' WHERE extname = 'payments';
	GRANT USAGE ON SCHEMA payments TO payments_app;
	SELECT payments.stock_set('cached', 2);
});
like($err, qr/version "99\.0\.0" is installed/,
	'D: a session that already used the extension refuses the schema of a later update step');
$node->safe_psql('postgres',
	q{UPDATE pg_extension SET extversion = (SELECT default_version
	  FROM pg_available_extensions WHERE name = 'payments') WHERE extname = 'payments'});
for my $step (glob('src/sql/payments--*--*.sql'))
{
	like(slurp_file($step), qr/GRANT USAGE ON SCHEMA \@extschema\@ TO payments_app;\s*\z/,
		"D: $step ends by touching the schema's catalog row");
}

# E. The schema's owner renames it before the update.
$node->safe_psql('postgres', 'CREATE DATABASE renamed OWNER dbo');
$node->safe_psql('renamed', 'CREATE SCHEMA payments', extra_params => [ '-U', 'dbo' ]);
$node->safe_psql('renamed', "CREATE EXTENSION payments VERSION '0.1.0'");
$node->safe_psql('renamed', q{
	ALTER SCHEMA payments RENAME TO payments_real;
	CREATE SCHEMA payments;
	CREATE TABLE payments.compensations (handler text, dedup_key text);
	CREATE INDEX compensations_dedup_key_idx ON payments.compensations (dedup_key);
	CREATE TABLE payments.compensation_attempts ();
	CREATE TABLE payments.external_handlers ();
	CREATE VIEW payments.compensation_stats AS SELECT 1 AS x;
	CREATE FUNCTION payments.idempotency_begin(text, text, jsonb, interval) RETURNS void LANGUAGE sql AS 'SELECT';
	CREATE FUNCTION payments.idempotency_checkpoint(text, text, text) RETURNS void LANGUAGE sql AS 'SELECT';
	CREATE FUNCTION payments.idempotency_complete(text, text, jsonb, integer) RETURNS void LANGUAGE sql AS 'SELECT';
	CREATE FUNCTION payments.idempotency_abandon(text, text) RETURNS void LANGUAGE sql AS 'SELECT';
	CREATE FUNCTION payments.state_guard() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NULL; END';
	CREATE FUNCTION payments.retry_compensation(bigint) RETURNS void LANGUAGE sql AS 'SELECT';
	CREATE FUNCTION payments.cancel_compensation(bigint) RETURNS void LANGUAGE sql AS 'SELECT';
	CREATE FUNCTION payments.complete_compensation(bigint) RETURNS void LANGUAGE sql AS 'SELECT';
	CREATE FUNCTION payments.fail_compensation(bigint, text) RETURNS void LANGUAGE sql AS 'SELECT';
	CREATE FUNCTION payments.run_compensations(integer) RETURNS integer LANGUAGE sql AS 'SELECT 0';
}, extra_params => [ '-U', 'dbo' ]);
($ret, $out, $err) = $node->psql('renamed', 'ALTER EXTENSION payments UPDATE');
my $secdef = $node->safe_psql('renamed', q{
	SELECT count(*) FROM pg_proc p JOIN pg_extension e ON e.extnamespace = p.pronamespace
	 WHERE e.extname = 'payments' AND p.prosecdef
	   AND p.proname IN ('cancel_compensation', 'retry_compensation', 'idempotency_begin')});
ok($ret != 0 || $secdef eq '0',
	"E: the update refuses, or updates the extension's own schema, when that schema was renamed");

# F. Default privileges of the installing role.
$node->safe_psql('postgres', q{
	CREATE ROLE helper LOGIN;
	ALTER DEFAULT PRIVILEGES GRANT ALL ON TABLES TO helper;
	ALTER DEFAULT PRIVILEGES GRANT ALL ON SEQUENCES TO helper;
	ALTER DEFAULT PRIVILEGES GRANT EXECUTE ON FUNCTIONS TO helper;
	CREATE DATABASE fresh_defaults;
	CREATE DATABASE updated_defaults;
});
$node->safe_psql('fresh_defaults', 'CREATE EXTENSION payments');
$node->safe_psql('updated_defaults',
	"CREATE EXTENSION payments VERSION '0.1.0'; ALTER EXTENSION payments UPDATE");
for my $db ('fresh_defaults', 'updated_defaults')
{
	is($node->safe_psql($db, q{
		SELECT count(*) FROM (
		  SELECT FROM pg_class c, aclexplode(c.relacl) a
		   WHERE c.relnamespace = 'payments'::regnamespace AND a.grantee = 'helper'::regrole
		  UNION ALL
		  SELECT FROM pg_proc p, aclexplode(p.proacl) a
		   WHERE p.pronamespace = 'payments'::regnamespace AND a.grantee = 'helper'::regrole) x}),
		'0', "F: $db: default privileges give no role rights on the extension's objects");
}
$node->safe_psql('postgres', q{
	ALTER DEFAULT PRIVILEGES REVOKE ALL ON TABLES FROM helper;
	ALTER DEFAULT PRIVILEGES REVOKE ALL ON SEQUENCES FROM helper;
	ALTER DEFAULT PRIVILEGES REVOKE ALL ON FUNCTIONS FROM helper;
});

done_testing();
