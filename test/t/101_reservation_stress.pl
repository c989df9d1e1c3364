# Stress test of inventory reservations: 64 concurrent clients.
#
# 1. 64 clients reserve one unit each from a hot SKU with 1,000 units split
#    across 16 slots, until it is sold out.  Exactly 1,000 holds exist,
#    nothing is available, and every client stopped on "not enough stock".
# 2. 64 clients confirm the holds of even rank and release those of odd
#    rank, picked at random so the same hold is often hit by several
#    clients at once; a sweep finishes the rest.  Each hold is resolved
#    once, and the sums are exact: 500 sold, 500 back on hand.
# 3. 64 clients reserve two-SKU orders, listing the SKUs in random order,
#    until one SKU is sold out.  No deadlock: every client stops on "not
#    enough stock", and exactly as many orders as units were held.
use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PaymentsNode;

my $node = payments_node('reservation_stress', worker_timings => 0,
	conf => "max_connections = 100\n");

my $db = 'postgres';
$node->safe_psql($db, 'CREATE EXTENSION payments');

# Run pgbench with 64 clients on one script; returns (exit code, stdout,
# stderr).
my $run = 0;
sub pgbench_64
{
	my ($transactions, $script) = @_;
	my $file = $node->basedir . '/stress_' . $run++ . '.sql';
	append_to_file($file, $script);
	my ($stdout, $stderr);
	IPC::Run::run(
		[
			'pgbench', '--no-vacuum', '--client=64', '--jobs=4',
			"--transactions=$transactions", "--file=$file",
			$node->connstr($db)
		],
		'>', \$stdout, '2>', \$stderr);
	return ($? >> 8, $stdout, $stderr);
}

# Each client stops at its first error; pgbench then exits with status 2.
# Count the clients that stopped, and those that stopped for another reason
# than the stock running out.
sub aborted_clients
{
	my ($stderr) = @_;
	my @aborts = ($stderr =~ /^.*client \d+ .*aborted.*$/mg);
	my @other = grep { !/not enough stock of SKU/ } @aborts;
	diag("unexpected abort: $_") foreach @other;
	return (scalar(@aborts), scalar(@other));
}

# 1. The hot SKU sells out exactly.
$node->safe_psql($db, "SELECT payments.stock_set('hot', 1000, slots => 16)");
my ($rc, $out, $err) = pgbench_64(1000,
	"SELECT payments.reserve('client-' || :client_id, 'hot', 1);\n");
is($rc, 2, 'every client stopped on an error');
my ($aborted, $other) = aborted_clients($err);
is($aborted, 64, 'all 64 clients ran until the SKU was sold out');
is($other, 0, 'every client stopped because the stock ran out');
like($out, qr{actually processed: 1000/64000},
	'exactly 1,000 reserves succeeded');
is( $node->safe_psql(
		$db,
		"SELECT count(*), sum(qty) FROM payments.reservations WHERE state = 'held'"
	),
	'1000|1000',
	'exactly 1,000 holds of one unit exist');
is( $node->safe_psql(
		$db, "SELECT on_hand, held, available FROM payments.stock_levels WHERE sku = 'hot'"),
	'1000|1000|0',
	'on_hand 1000, held 1000, available 0');
is( $node->safe_psql(
		$db, "SELECT sum(available), min(available) FROM payments.stock_slots WHERE sku = 'hot'"),
	'0|0',
	'no unit is left in any slot');

# 2. Confirm half, release half, with clients racing for the same holds.
($rc, $out, $err) = pgbench_64(50, <<'EOS');
\set n random(0, 999)
SELECT CASE WHEN r.n % 2 = 0 THEN payments.confirm_reservation(r.id)
            ELSE payments.release_reservation(r.id) END
  FROM (SELECT id, row_number() OVER (ORDER BY id) - 1 AS n
          FROM payments.reservations WHERE sku = 'hot') r
 WHERE r.n = :n;
EOS
is($rc, 0, 'concurrent confirms and releases raised no error')
  or diag($err);
$node->safe_psql(
	$db, q{
	SELECT CASE WHEN r.n % 2 = 0 THEN payments.confirm_reservation(r.id)
	            ELSE payments.release_reservation(r.id) END
	  FROM (SELECT id, state, row_number() OVER (ORDER BY id) - 1 AS n
	          FROM payments.reservations WHERE sku = 'hot') r
	 WHERE r.state = 'held'
});
is( $node->safe_psql(
		$db,
		"SELECT string_agg(state || '=' || n, ',' ORDER BY state) FROM (SELECT state, count(*) AS n FROM payments.reservations GROUP BY state) s"
	),
	'confirmed=500,released=500',
	'500 holds confirmed and 500 released, none left held');
is( $node->safe_psql(
		$db, "SELECT on_hand, held, available FROM payments.stock_levels WHERE sku = 'hot'"),
	'500|0|500',
	'on_hand 500, held 0, available 500');
is( $node->safe_psql(
		$db, "SELECT sum(available) FROM payments.stock_slots WHERE sku = 'hot'"),
	'500',
	'the 500 released units are back in the slots');
is( $node->safe_psql(
		$db,
		"SELECT count(*) FROM (SELECT state, row_number() OVER (ORDER BY id) - 1 AS n FROM payments.reservations WHERE sku = 'hot') r WHERE (n % 2 = 0) <> (state = 'confirmed')"
	),
	'0',
	'holds of even rank were confirmed, those of odd rank released');

# 3. Two-SKU orders in random item order: no deadlock, exact totals.
$node->safe_psql($db,
	"SELECT payments.stock_set('x', 500, slots => 4), payments.stock_set('y', 500, slots => 4)"
);
($rc, $out, $err) = pgbench_64(1000, <<'EOS');
\set flip random(0, 1)
\if :flip
SELECT payments.reserve('pair-' || :client_id, jsonb_build_array(jsonb_build_object('sku', 'x', 'qty', 1), jsonb_build_object('sku', 'y', 'qty', 1)));
\else
SELECT payments.reserve('pair-' || :client_id, jsonb_build_array(jsonb_build_object('sku', 'y', 'qty', 1), jsonb_build_object('sku', 'x', 'qty', 1)));
\endif
EOS
($aborted, $other) = aborted_clients($err);
is($aborted, 64, 'all 64 clients ran until a SKU was sold out');
is($other, 0, 'no client stopped on a deadlock or any other error');
like($out, qr{actually processed: 500/64000},
	'exactly 500 two-SKU orders succeeded');
is( $node->safe_psql(
		$db,
		"SELECT string_agg(sku || ':' || on_hand || '/' || held || '/' || available, ',' ORDER BY sku) FROM payments.stock_levels WHERE sku IN ('x', 'y')"
	),
	'x:500/500/0,y:500/500/0',
	'both SKUs fully held, nothing available');

$node->stop;
done_testing();
