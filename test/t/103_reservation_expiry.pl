# The worker expires reservations whose TTL has run out, with no client
# action: on a primary, after a promotion, and across an immediate shutdown
# in the middle of its batches, where no batch is lost or applied twice.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PaymentsNode;

my $primary = payments_node('primary', allows_streaming => 1);
$primary->safe_psql('postgres', 'CREATE EXTENSION payments');
wait_for_worker($primary, 'postgres');

sub levels
{
	my ($node, $sku) = @_;
	return $node->safe_psql('postgres',
		"SELECT on_hand || '/' || held || '/' || available FROM payments.stock_levels WHERE sku = '$sku'");
}

sub states
{
	my ($node, $sku) = @_;
	return $node->safe_psql('postgres',
		"SELECT string_agg(state || '=' || n, ',' ORDER BY state) FROM"
		  . " (SELECT state, count(*) n FROM payments.reservations WHERE sku = '$sku' GROUP BY state) s");
}

# --- holds expire with no client action ---

$primary->safe_psql('postgres', q{
	SELECT payments.stock_set('A', 10);
	SELECT payments.reserve('order-' || i, 'A', 1, '1 hour') FROM generate_series(1, 4) i;
	-- two buyers walked away: their holds run out now
	UPDATE payments.reservations SET expires_at = now() - interval '1 second'
	 WHERE order_ref IN ('order-1', 'order-2');
});
$primary->poll_query_until('postgres',
	"SELECT count(*) FROM payments.reservations WHERE sku = 'A' AND state = 'expired'", '2')
  or die 'holds not expired';
is(states($primary, 'A'), 'expired=2,held=2', 'the worker expires the holds whose TTL ran out, and only those');
is(levels($primary, 'A'), '10/2/8', 'their stock is available again');

# --- immediate shutdown in the middle of the worker's batches ---

$primary->safe_psql('postgres', q{
	SELECT payments.stock_set('B', 20000);
	ALTER SYSTEM SET payments.worker_enabled = off;
	SELECT pg_reload_conf();
});
$primary->poll_query_until('postgres', "SELECT state FROM payments.worker_status()", 'stopped')
  or die 'worker did not stop';
$primary->safe_psql('postgres', q{
	DO $$
	BEGIN
		FOR b IN 0..19 LOOP
			PERFORM payments.reserve('bulk-' || i, 'B', 1, '1 hour') FROM generate_series(b * 1000 + 1, b * 1000 + 1000) i;
			COMMIT;
		END LOOP;
	END $$;
	UPDATE payments.reservations SET expires_at = now() - interval '1 second' WHERE sku = 'B';
});
is(levels($primary, 'B'), '20000/0/20000', '20,000 holds past their TTL hold nothing');
$primary->safe_psql('postgres', q{
	ALTER SYSTEM SET payments.worker_enabled = on;
	SELECT pg_reload_conf();
});
$primary->poll_query_until('postgres',
	"SELECT count(*) > 0 FROM payments.reservations WHERE sku = 'B' AND state = 'expired'", 't')
  or die 'expiry did not start';
$primary->stop('immediate');
$primary->start;
ok( $primary->poll_query_until('postgres',
		"SELECT count(*) FROM payments.reservations WHERE sku = 'B' AND state = 'held'", '0'),
	'after an immediate shutdown mid-expiry, the worker expires every hold');
is(levels($primary, 'B'), '20000/0/20000', 'and the stock adds up exactly: nothing returned twice');
is( $primary->safe_psql('postgres',
		"SELECT sum(available) FROM payments.stock_slots WHERE sku = 'B'"),
	'20000', 'the slots hold exactly the stock given back');

# --- standby: nothing expires there; after promotion the worker catches up ---

my $standby = payments_standby($primary, 'standby');
$primary->safe_psql('postgres', q{
	SELECT payments.stock_set('C', 5);
	SELECT payments.reserve('late-' || i, 'C', 1, '2 seconds') FROM generate_series(1, 3) i;
});
$primary->wait_for_catchup($standby);
$primary->stop;
# No worker runs on a standby, but once their TTLs have run out the holds
# count as available there too.
ok( $standby->poll_query_until('postgres',
		"SELECT available FROM payments.stock_levels WHERE sku = 'C'", '5'),
	'on the standby, holds past their TTL count as available');
$standby->promote;
ok( $standby->poll_query_until('postgres',
		"SELECT count(*) FROM payments.reservations WHERE sku = 'C' AND state = 'expired'", '3'),
	'after promotion the worker expires what became due meanwhile');
is(levels($standby, 'C'), '5/0/5', 'and the stock is available again');

$standby->stop;
done_testing();
