# Consistency checks with the worker running:
#  - a user check with a heal, defined by an application role (not a
#    superuser): the worker runs it every second as that role; a violation
#    planted by hand is healed exactly once and then cleared, and a
#    violation the heal cannot fix is escalated, never healed twice;
#  - payments.check() reports a lapsed hold that a worker should have
#    expired (the expiry is made to fail with a fault drill), and nothing
#    once the worker has expired it.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PaymentsNode;

my $node = payments_node('checks', conf => qq{
payments.fault_injection = on
});

$node->safe_psql('postgres', 'CREATE DATABASE shop');
$node->safe_psql('shop', q{
CREATE EXTENSION payments;
CREATE ROLE shop_app LOGIN;
GRANT payments_app TO shop_app;
CREATE SCHEMA app AUTHORIZATION shop_app;
});
wait_for_worker($node, 'shop');

sub app_sql
{
	my ($sql) = @_;
	return $node->safe_psql('shop', $sql, extra_params => [ '-U', 'shop_app' ]);
}

app_sql(q{
CREATE TABLE app.orders (ref text PRIMARY KEY, paid boolean, confirmed boolean, fixable boolean);
CREATE TABLE app.heals (n serial, ref text, healed_by text);
CREATE FUNCTION app.confirm_paid(p jsonb) RETURNS void LANGUAGE sql AS $$
    INSERT INTO app.heals (ref, healed_by) VALUES (p->>'object', current_user);
    UPDATE app.orders SET confirmed = true WHERE ref = p->>'object' AND fixable;
$$;
SELECT payments.define_check('paid_unconfirmed',
    'SELECT ref, ''paid, stock not confirmed'' FROM app.orders WHERE paid AND NOT confirmed',
    heal => 'app.confirm_paid(jsonb)', every => '1 second');
});

# A healthy start: the check runs and finds nothing.
$node->poll_query_until('shop',
	"SELECT last_run_at IS NOT NULL AND last_error IS NULL FROM payments.check_status")
  or die 'the check never ran';
is($node->safe_psql('shop', 'SELECT open_violations FROM payments.check_status'),
	'0', 'a healthy database: no violation');

# Plant two violations: one the heal fixes, one it cannot.
app_sql(q{INSERT INTO app.orders VALUES ('A-1', true, false, true), ('A-2', true, false, false)});
$node->poll_query_until('shop', q{
SELECT count(*) = 1 FROM payments.check_results
 WHERE object = 'A-1' AND cleared_at IS NOT NULL})
  or die 'A-1 was never healed and cleared';
$node->poll_query_until('shop', q{
SELECT severity = 'error' FROM payments.check_results WHERE object = 'A-2' AND cleared_at IS NULL})
  or die 'A-2 was never escalated';
pass('the fixable violation is healed and cleared; the other is escalated');

# Several more runs: nothing is healed twice.
my $runs = $node->safe_psql('shop', 'SELECT last_run_at FROM payments.checks');
$node->poll_query_until('shop',
	"SELECT last_run_at > '$runs'::timestamptz + interval '2 seconds' FROM payments.checks")
  or die 'the check stopped running';
is(app_sql(q{SELECT string_agg(ref || ':' || healed_by, ',' ORDER BY ref) FROM app.heals}),
	'A-1:shop_app,A-2:shop_app', 'each object healed once, as the role that owns the check');
is($node->safe_psql('shop', q{SELECT open_violations || ' ' || escalated_violations FROM payments.check_status}),
	'1 1', 'check_status: one open violation, escalated');

# Repaired by hand: cleared at the next run.
app_sql(q{UPDATE app.orders SET confirmed = true WHERE ref = 'A-2'});
$node->poll_query_until('shop',
	'SELECT open_violations = 0 FROM payments.check_status')
  or die 'the repaired violation was never cleared';
pass('a violation repaired by hand is cleared');

# The built-in checks: a lapsed hold that the worker cannot expire (its
# expiry fails at a fault point) is reported; once the point is disarmed
# the worker expires it and nothing is reported.
$node->safe_psql('shop', q{
SELECT payments.stock_set('mug', 10);
SELECT payments.reserve('late-order', 'mug', 2);
SELECT payments.fault_arm('reservation_expire_batch', 'error', times => 1000000);
UPDATE payments.reservations SET expires_at = now() - interval '10 minutes';
});
$node->poll_query_until('shop',
	"SELECT hits > 0 FROM payments.fault_points WHERE point = 'reservation_expire_batch'")
  or die 'the worker never tried to expire the hold';
is($node->safe_psql('shop', 'SELECT check_name, severity FROM payments.check()'),
	'lapsed_hold|warning', 'check(): the lapsed hold the worker could not expire');
$node->safe_psql('shop', 'SELECT payments.fault_disarm()');
$node->poll_query_until('shop',
	"SELECT state = 'expired' FROM payments.reservations WHERE order_ref = 'late-order'")
  or die 'the hold was never expired';
is($node->safe_psql('shop', 'SELECT count(*) FROM payments.check()'),
	'0', 'check(): nothing once the worker expired the hold');

$node->stop;
done_testing();
