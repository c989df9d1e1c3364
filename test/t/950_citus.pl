# Citus (issue 20, stage 1): when Citus manages a table of the extension, no
# entry point reads or writes the table's local shell.  Each refuses with
# SQLSTATE 0A000 and says what to do, and the worker leaves the database
# alone, says why in worker_status() and logs it once, not every round: on
# the coordinator and on the nodes Citus syncs its metadata to.  A guarded
# table that Citus manages is refused, on the coordinator and on its
# shards.  Returning the tables to local ones brings everything back.
#
# Runs only where Citus is installed (.ci/run builds it from
# ../shared/vendor); a coordinator and two workers on this machine.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use PaymentsNode;

my $probe = PostgreSQL::Test::Cluster->new('probe');
plan skip_all => 'Citus is not installed'
  unless -e $probe->config_data('--pkglibdir') . '/citus.so';

my ($coord, @workers) = citus_cluster(conf => qq{
payments.worker_naptime = 200ms
});
my @nodes = ($coord, @workers);
$coord->safe_psql('postgres', q{
	CREATE EXTENSION payments;
	CREATE TABLE done (n int);
	CREATE FUNCTION ok(p jsonb) RETURNS void LANGUAGE sql
	    AS $$ INSERT INTO public.done VALUES ((p->>'n')::int) $$;
	SELECT payments.stock_set('A', 10);
	SELECT payments.define_state_machine('order',
	    '{"new": ["paid"], "paid": []}', ARRAY['new']);
});
for my $w (@workers)
{
	is($w->safe_psql('postgres',
			"SELECT count(*) FROM pg_extension WHERE extname = 'payments'"),
		'1', 'Citus propagated the extension to ' . $w->name);
}

# psql_error(node, sql): the SQLSTATE and message of the error sql raises
sub psql_error
{
	my ($node, $sql) = @_;
	my ($ret, $out, $err) = $node->psql('postgres',
		"\\set VERBOSITY verbose\n$sql", on_error_stop => 1);
	return $ret == 0 ? 'no error' : $err;
}

# --- a guarded table that Citus manages ---

$coord->safe_psql('postgres', q{
	CREATE TABLE orders (id int PRIMARY KEY, status text NOT NULL);
	INSERT INTO orders VALUES (1, 'new');
	SELECT payments.guard_state('orders', 'status', 'order');
	CREATE TABLE carts (id int PRIMARY KEY, status text NOT NULL);
	SELECT payments.guard_state('carts', 'status', 'order');
});
like(
	psql_error($coord, q{
		SET citus.enable_unsafe_triggers = on;
		SELECT create_distributed_table('orders', 'id');
	}),
	qr/ERROR:  [0-9A-Z]{5}: the state guard does not support relation "orders_\d+", which is a Citus shard/,
	'distributing a guarded table is refused when its rows reach the shards');
is($coord->safe_psql('postgres',
		q{SELECT count(*) FROM pg_dist_partition WHERE logicalrelid = 'orders'::regclass}),
	'0', 'the guarded table stayed local');

$coord->safe_psql('postgres', q{
	SET citus.enable_unsafe_triggers = on;
	SELECT create_distributed_table('carts', 'id');
});
like(psql_error($coord, "INSERT INTO carts VALUES (1, 'new')"),
	qr/0A000: the state guard does not support relation "carts_\d+", which is a Citus shard/,
	'a write to a guarded table distributed while empty is refused on its shard');
is($coord->safe_psql('postgres', 'SELECT count(*) FROM carts'), '0',
	'the refused INSERT added nothing');
is($_->safe_psql('postgres', 'SELECT count(*) FROM payments.state_history'),
	'0', 'no history was written on ' . $_->name)
  for @nodes;

$coord->safe_psql('postgres', q{
	CREATE TABLE refunds (id int PRIMARY KEY, status text NOT NULL);
	SELECT create_distributed_table('refunds', 'id');
});
like(psql_error($coord, "SELECT payments.guard_state('refunds', 'status', 'order')"),
	qr/0A000: the state guard does not support table public\.refunds, which Citus manages/,
	'guard_state refuses a distributed table');

# --- a table of the extension that Citus manages ---

my $work = q{
	SELECT payments.enqueue_compensation('public.ok(jsonb)', '{"n": 1}');
	SELECT payments.reserve('order-1', 'A', 1, '1 hour');
};
$coord->safe_psql('postgres', $work);
$coord->poll_query_until('postgres', 'SELECT count(*) FROM public.done', '1')
  or die 'the worker did not run the compensation before Citus';

# A session that used the extension before Citus took its table: what it
# cached (the answer, relation OIDs, plans) must not outlive the change.
my $app = $coord->background_psql('postgres', on_error_stop => 0);
$app->query_safe(q{SELECT payments.idempotency_begin('s', 'k-before', '{}')});
$app->query_safe(q{SELECT payments.stock_set('C', 3)});

$coord->append_conf('postgresql.conf', 'log_min_messages = debug1');
$coord->reload;
my $log_from = -s $coord->logfile;
$coord->safe_psql('postgres',
	"SELECT create_distributed_table('payments.idempotency_keys', 'key')");

for my $sql (
	"SELECT payments.idempotency_begin('s', 'k1', '{}')",
	"SELECT payments.reserve('order-2', 'A', 1, '1 hour')",
	"SELECT payments.confirm_order('order-1')",
	"SELECT payments.enqueue_compensation('public.ok(jsonb)', '{\"n\": 2}')",
	"SELECT payments.stock_set('B', 5)",
	'SELECT payments.purge()')
{
	like(psql_error($coord, $sql),
		qr/0A000: extension "payments" does not support tables managed by Citus.*DETAIL:  Citus manages payments\.idempotency_keys \(distributed\).*HINT:  Return them to local tables on the coordinator/s,
		"refused while Citus manages a table of the extension: $sql");
}
is($coord->safe_psql('postgres',
		q{SELECT string_agg(sku || ':' || held, ',' ORDER BY sku) FROM payments.stock_levels}),
	'A:1,C:0', 'the refused calls held nothing');
is($coord->safe_psql('postgres', 'SELECT count(*) FROM payments.compensations'),
	'1', 'the refused enqueue queued nothing');

for my $sql (q{SELECT payments.idempotency_begin('s', 'k-after', '{}')},
	q{SELECT payments.stock_set('C', 4)})
{
	$app->{stderr} = '';
	$app->query($sql);
	like($app->{stderr}, qr/extension "payments" does not support tables managed by Citus/,
		"refused in a session that used the extension before: $sql");
}

ok( $coord->poll_query_until('postgres',
		q{SELECT state || ': ' || unserved_reason FROM payments.worker_status()},
		'unserved: Citus manages tables of the extension: payments.idempotency_keys (distributed)'),
	'worker_status() on the coordinator says why the worker leaves the database alone');

# The worker is started again each naptime: wait for three such starts,
# then only one of them may have logged at LOG and none raised an error.
my $visits = 0;
for (1 .. 600)
{
	my $log = slurp_file($coord->logfile, $log_from);
	$visits = () = $log =~ /DEBUG:  payments worker for database \d+ leaves it alone because Citus/g;
	last if $visits >= 3;
	usleep(100_000);
}
ok($visits >= 3, "the worker came back $visits times and left again");
my $log = slurp_file($coord->logfile, $log_from);
my $logged = () = $log =~ /LOG:  payments worker for database \d+ leaves it alone because Citus/g;
is($logged, 1, 'the log says so once');
unlike($log, qr/ERROR:.*\n.*(?:payments worker|background worker "payments)/,
	'the worker raised no error');

for my $w (@workers)
{
	like(psql_error($w, "SELECT payments.reserve('order-3', 'A', 1, '1 hour')"),
		qr/0A000: extension "payments" does not support tables managed by Citus/,
		'refused on ' . $w->name . ', which has Citus metadata');
	ok( $w->poll_query_until('postgres',
			q{SELECT state FROM payments.worker_status()}, 'unserved'),
		'worker_status() on ' . $w->name . ' says the worker leaves the database alone');
}

like(psql_error($coord, 'DROP EXTENSION payments'),
	qr/0A000: cannot drop extension "payments" while Citus manages its tables/,
	'DROP EXTENSION is refused: the shards would stay behind');

# --- back to local tables, as the README shows ---

$coord->safe_psql('postgres', q{
	INSERT INTO payments.idempotency_keys (scope, key, request_hash, expires_at)
	VALUES ('s', 'k0', sha256('{}'), now() + interval '1 day');
	BEGIN;
	CREATE TEMP TABLE keep AS SELECT * FROM payments.idempotency_keys;
	SELECT master_remove_distributed_table_metadata_from_workers(
	    'payments.idempotency_keys'::regclass, 'payments', 'idempotency_keys');
	SELECT citus_drop_all_shards(
	    'payments.idempotency_keys'::regclass, 'payments', 'idempotency_keys');
	SELECT master_remove_partition_metadata(
	    'payments.idempotency_keys'::regclass, 'payments', 'idempotency_keys');
	DELETE FROM payments.idempotency_keys;
	INSERT INTO payments.idempotency_keys OVERRIDING SYSTEM VALUE SELECT * FROM keep;
	COMMIT;
});
is($coord->safe_psql('postgres', q{
		SELECT (payments.idempotency_begin('s', 'k1', '{}')).outcome;
		SELECT count(*) FROM payments.idempotency_keys}),
	"started\n3", 'calls work again once the table is local, and its rows are kept');
$app->{stderr} = '';
is($app->query_safe(q{SELECT (payments.idempotency_begin('s', 'k-after', '{}')).outcome}),
	'started', 'and in the session that used it before Citus took the table');
$app->quit;
$coord->safe_psql('postgres',
	q{SELECT payments.enqueue_compensation('public.ok(jsonb)', '{"n": 2}')});
ok($coord->poll_query_until('postgres', 'SELECT count(*) FROM public.done', '2'),
	'the worker serves the database again');
isnt($coord->safe_psql('postgres', 'SELECT state FROM payments.worker_status()'),
	'unserved', 'worker_status() no longer says it is unserved');

# With its tables local, DROP EXTENSION leaves no table of it on any node.
$coord->safe_psql('postgres', 'DROP TABLE orders, carts, refunds; DROP EXTENSION payments');
for my $node (@nodes)
{
	is($node->safe_psql('postgres',
			q{SELECT count(*) FROM pg_class WHERE relname LIKE 'idempotency_keys%'}),
		'0', 'after DROP EXTENSION no table of it is left on ' . $node->name);
}

$_->stop for @nodes;
done_testing();
