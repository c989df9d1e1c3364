# The worker on a streaming standby does nothing; after promotion it runs
# and catches up with what became due.  A database dumped and restored into
# a new cluster gets its worker, with all its data.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PaymentsNode;

my $primary = payments_node('primary', allows_streaming => 1);
$primary->safe_psql('postgres', 'CREATE DATABASE shop');
$primary->safe_psql('shop', 'CREATE EXTENSION payments');
wait_for_worker($primary, 'shop');

my $standby = payments_standby($primary, 'standby');

# Keys that expire in a few seconds, committed on the primary, which then
# stops: no worker runs on the standby; after promotion one purges them.
$primary->safe_psql('shop', q{
	INSERT INTO payments.idempotency_keys
		(scope, key, request_hash, state, response, response_code, expires_at)
	SELECT 's', 'k' || i, sha256('{}'), 'completed', '{}', 200, clock_timestamp() + interval '2 seconds'
	  FROM generate_series(1, 100) i;
});
$primary->wait_for_catchup($standby);
$primary->stop;

is( $standby->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type IN ('payments launcher', 'payments worker')"),
	'0', 'no launcher or worker runs on a standby');
is($standby->safe_psql('shop', 'SELECT state FROM payments.worker_status()'),
	'stopped', 'worker_status() on the standby says no worker runs');

$standby->promote;
ok($standby->poll_query_until('shop', 'SELECT count(*) FROM payments.idempotency_keys', '0'),
	'after promotion the worker starts and purges what became due');
is( $standby->safe_psql('postgres',
		"SELECT datname FROM pg_stat_activity WHERE backend_type = 'payments worker'"),
	'shop', 'the promoted server runs the worker of the database');

# --- dump and restore into a new cluster ---

$standby->safe_psql('shop', q{
	SELECT payments.idempotency_begin('s', 'kept' || i, jsonb_build_object('n', i)) FROM generate_series(1, 20) i;
	SELECT payments.idempotency_complete('s', 'kept' || i, jsonb_build_object('r', i)) FROM generate_series(1, 20) i;
	INSERT INTO payments.idempotency_keys
		(scope, key, request_hash, state, response, response_code, expires_at)
	SELECT 's', 'due' || i, sha256('{}'), 'completed', '{}', 200, clock_timestamp() + interval '3 seconds'
	  FROM generate_series(1, 10) i;
});
my $dump = $standby->basedir . '/shop.dump';
$standby->command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', $standby->connstr('shop') ],
	'pg_dump of the database');

my $fresh = payments_node('fresh');
$fresh->safe_psql('postgres', 'CREATE DATABASE shop');
$fresh->command_ok([ 'pg_restore', '-d', $fresh->connstr('shop'), $dump ],
	'pg_restore into a new cluster');
is( $fresh->safe_psql('shop',
		"SELECT count(*) FROM payments.idempotency_keys WHERE key LIKE 'kept%' AND state = 'completed'"),
	'20', 'the restored cluster has the completed keys');
is( $fresh->safe_psql('shop',
		"SELECT outcome || ':' || response::text FROM payments.idempotency_begin('s', 'kept3', '{\"n\": 3}')"),
	'replayed:{"r": 3}', 'and replays them');
ok($fresh->poll_query_until('shop', 'SELECT pid IS NOT NULL FROM payments.worker_status()', 't'),
	'the restored database gets its worker');
ok($fresh->poll_query_until('shop', "SELECT count(*) FROM payments.idempotency_keys WHERE key LIKE 'due%'", '0'),
	'which purges the restored keys once they expire');
is( $fresh->safe_psql('shop', "SELECT count(*) FROM payments.idempotency_keys WHERE key LIKE 'kept%'"),
	'20', 'and keeps the keys whose TTL has not run out');

$fresh->stop;
$standby->stop;
done_testing();
