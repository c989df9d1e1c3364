# Idempotency keys are user data: pg_dump keeps them and a restored database
# replays them.  On a hot standby the writing functions refuse with a clear
# error, and after promotion they work.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PaymentsNode;

my $node = payments_node('primary', allows_streaming => 1, worker_timings => 0);
$node->safe_psql('postgres', 'CREATE DATABASE shop');
$node->safe_psql('shop', q{
	CREATE EXTENSION payments;
	SELECT payments.idempotency_begin('shop', 'k' || i, jsonb_build_object('order', i))
	  FROM generate_series(1, 50) AS i;
	SELECT payments.idempotency_complete('shop', 'k' || i, jsonb_build_object('charge', i), 201)
	  FROM generate_series(1, 40) AS i;
});

# --- pg_dump and restore into a new database ---

my $dump = $node->basedir . '/shop.dump';
$node->command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', $node->connstr('shop') ],
	'pg_dump of a database with the extension');
$node->safe_psql('postgres', 'CREATE DATABASE shop_restored');
$node->command_ok([ 'pg_restore', '-d', $node->connstr('shop_restored'), $dump ],
	'pg_restore into a new database');

my $fingerprint = q{SELECT count(*), count(*) FILTER (WHERE state = 'completed'),
	md5(string_agg(scope || key || encode(request_hash, 'hex') || state
	    || coalesce(response::text, '') || coalesce(response_code, 0), ',' ORDER BY key))
	FROM payments.idempotency_keys};
my $before = $node->safe_psql('shop', $fingerprint);
like($before, qr/^50\|40\|/, 'the dumped database has 50 keys, 40 completed');
is($node->safe_psql('shop_restored', $fingerprint), $before,
	'the restored database has the same keys, fingerprints and responses');
is( $node->safe_psql('shop_restored',
		"SELECT outcome || ':' || response::text || ':' || response_code FROM payments.idempotency_begin('shop', 'k7', '{\"order\": 7}')"),
	'replayed:{"charge": 7}:201',
	'a restored completed key replays its answer');
my ($ret, $stdout, $stderr) = $node->psql('shop_restored',
	"SELECT payments.idempotency_begin('shop', 'k7', '{\"order\": 8}')");
like($stderr, qr/already used for a different request/,
	'a restored key still refuses a different request');

# --- hot standby ---

my $standby = payments_standby($node, 'standby');
$node->safe_psql('shop', "SELECT payments.idempotency_begin('shop', 'late', '{}')");
$node->wait_for_catchup($standby);

($ret, $stdout, $stderr) = $standby->psql('shop',
	"SELECT payments.idempotency_begin('shop', 'k1', '{\"order\": 1}')");
like($stderr, qr/ERROR:  recovery is in progress/,
	'on a standby, begin refuses with a clear error');
($ret, $stdout, $stderr) = $standby->psql('shop', 'SELECT payments.purge_idempotency_keys()');
like($stderr, qr/ERROR:  recovery is in progress/,
	'on a standby, purge refuses with a clear error');
is($standby->safe_psql('shop', "SELECT state FROM payments.idempotency_keys WHERE key = 'late'"),
	'started', 'the standby has replayed the primary\'s keys');

$standby->promote;
is( $standby->safe_psql('shop',
		"SELECT outcome FROM payments.idempotency_begin('shop', 'k1', '{\"order\": 1}')"),
	'replayed', 'after promotion, the new primary replays keys');
is( $standby->safe_psql('shop',
		"SELECT outcome FROM payments.idempotency_begin('shop', 'new', '{}')"),
	'started', 'after promotion, the new primary begins new keys');

$standby->stop;
$node->stop;
done_testing();
