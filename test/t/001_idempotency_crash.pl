# Idempotency keys survive what kills a backend: a terminated backend or a
# crash (kill -9, then the postmaster's crash restart; an immediate
# shutdown) leaves nothing half-done, and a key committed at a checkpoint
# comes back as "recovering" with that checkpoint once its lease runs out.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PaymentsNode;

my $node = payments_node('main', worker_timings => 0, conf => "restart_after_crash = on\n");
$node->safe_psql('postgres', q{
	CREATE EXTENSION payments;
	CREATE TABLE charges (order_ref text PRIMARY KEY, amount bigint);
});

sub begin_sql
{
	my ($key, $order) = @_;
	return "SELECT outcome || ':' || coalesce(recovery_point, '-') "
	  . "FROM payments.idempotency_begin('t', '$key', jsonb_build_object('order', '$order'))";
}

sub count_of
{
	my ($where) = @_;
	return $node->safe_psql('postgres', "SELECT count(*) FROM $where");
}

# --- pg_terminate_backend of a backend in the middle of a flow ---

my $flow = $node->background_psql('postgres', on_error_stop => 0);
$flow->query_safe('BEGIN');
$flow->query_safe(begin_sql('k1', 'o1'));
$flow->query_safe("INSERT INTO charges VALUES ('o1', 10)");
my $pid = $flow->query_safe('SELECT pg_backend_pid()');

my ($ret, $stdout, $stderr) = $node->psql('postgres', begin_sql('k1', 'o1'));
like($stderr, qr/is in use by another transaction/,
	'a key held by an open transaction is refused to another session');

$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
$node->poll_query_until('postgres',
	"SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $pid)")
  or die 'terminated backend did not exit';
$flow->quit;

is(count_of("payments.idempotency_keys WHERE key = 'k1'"), '0',
	'terminated backend: its key is gone');
is(count_of('charges'), '0', 'terminated backend: its work is gone');
is($node->safe_psql('postgres', begin_sql('k1', 'o1')), 'started:-',
	'terminated backend: the key is free again at once');

# --- kill -9 of a backend mid-flow, and the crash restart that follows ---

# A multi-transaction flow: begin and a checkpoint are committed with a
# short lease; then, in an open transaction, a second checkpoint, another
# key and some work.
$flow = $node->background_psql('postgres', on_error_stop => 0);
$flow->query_safe("SET payments.idempotency_lease = '3s'");
$flow->query_safe(begin_sql('k2', 'o2'));
$flow->query_safe("INSERT INTO charges VALUES ('o2-gateway', 20)");
$flow->query_safe("SELECT payments.idempotency_checkpoint('t', 'k2', 'gateway_charged')");
$flow->query_safe('BEGIN');
$flow->query_safe("SELECT payments.idempotency_checkpoint('t', 'k2', 'order_paid')");
$flow->query_safe(begin_sql('k3', 'o3'));
$flow->query_safe("INSERT INTO charges VALUES ('o2', 20), ('o3', 30)");
$pid = $flow->query_safe('SELECT pg_backend_pid()');

kill 'KILL', $pid or die "could not kill backend $pid";
$flow->quit;
# The postmaster reinitializes after a backend crash; wait until it accepts
# connections again.
$node->poll_query_until('postgres', 'SELECT 1', '1')
  or die 'server did not come back after the crash';
ok($node->log_contains(qr/terminated by signal 9/),
	'the backend was really killed and the server restarted');

is(count_of("payments.idempotency_keys WHERE key = 'k3'"), '0',
	'kill -9: the key begun in the open transaction is gone');
is($node->safe_psql('postgres', 'SELECT string_agg(order_ref, \',\') FROM charges'),
	'o2-gateway', 'kill -9: only committed work remains');
is( $node->safe_psql('postgres',
		"SELECT state || ':' || recovery_point FROM payments.idempotency_keys WHERE key = 'k2'"),
	'started:gateway_charged',
	'kill -9: the key keeps its last committed checkpoint');

# Once the 3 s lease has run out, the next caller resumes the flow.
$node->poll_query_until('postgres', begin_sql('k2', 'o2'),
	'recovering:gateway_charged')
  or die 'key did not come back as recovering';
pass('kill -9: after its lease, the key comes back as recovering with its checkpoint');
($ret, $stdout, $stderr) = $node->psql('postgres', begin_sql('k2', 'o2'));
like($stderr, qr/is in use by another flow/,
	'the resuming caller holds the lease: a third caller is refused');

# --- immediate shutdown in the middle of a transaction ---

$flow = $node->background_psql('postgres', on_error_stop => 0);
$flow->query_safe('BEGIN');
$flow->query_safe(begin_sql('k4', 'o4'));
$flow->query_safe("SELECT payments.idempotency_complete('t', 'k4', '{\"charge\": 4}')");
$flow->query_safe("INSERT INTO charges VALUES ('o4', 40)");
$node->safe_psql('postgres',
	  begin_sql('k5', 'o5') . ";"
	. "SELECT payments.idempotency_complete('t', 'k5', '{\"charge\": 5}');"
	. "INSERT INTO charges VALUES ('o5', 50);");
$node->stop('immediate');
$flow->quit;
$node->start;

is(count_of("payments.idempotency_keys WHERE key = 'k4'"), '0',
	'immediate shutdown: the uncommitted key is gone');
is($node->safe_psql('postgres', begin_sql('k4', 'o4')), 'started:-',
	'immediate shutdown: the uncommitted key starts afresh');
is( $node->safe_psql('postgres',
		"SELECT outcome || ':' || response::text FROM payments.idempotency_begin('t', 'k5', '{\"order\": \"o5\"}')"),
	'replayed:{"charge": 5}',
	'immediate shutdown: the committed key replays its answer');
is($node->safe_psql('postgres', 'SELECT string_agg(order_ref, \',\' ORDER BY order_ref) FROM charges'),
	'o2-gateway,o5', 'immediate shutdown: exactly the committed work remains');

$node->stop;
done_testing();
