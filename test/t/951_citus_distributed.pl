# Citus (issue 20, second stage): payments.distribute() on a coordinator
# and two workers.  The reservation and idempotency tables are distributed
# by key; each call by key runs on the node that holds the key's shards,
# whichever node the client is connected to.  Replayed there: no oversell
# under concurrent reserves of one SKU from clients on every node, one
# effect per idempotency key, hold ids unique across nodes, the rows that
# were there before kept, expiry by each node's worker on its own shards,
# the calls that span keys refused, the state guard on a distributed table
# (refusals and history on the node of each row, machines redefined on the
# coordinator read anew everywhere), the compensation queue distributed by
# flow (items queued anywhere run by the worker of their shard's node,
# chains on one shard, calls by id, dedup keys, external claims over every
# shard, a saga's undo, exactly once across a kill -9 of a worker node's
# worker), and DROP EXTENSION leaving no shard.
#
# Runs only where Citus is installed (.ci/run builds it from
# ../shared/vendor).
use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PaymentsNode;

my $probe = PostgreSQL::Test::Cluster->new('probe');
plan skip_all => 'Citus is not installed'
  unless -e $probe->config_data('--pkglibdir') . '/citus.so';

my ($coord, @workers) = citus_cluster(conf => qq{
max_prepared_transactions = 100
payments.worker_naptime = 200ms
});
my @nodes = ($coord, @workers);

# Each node gives a role an OID of its own: use up OIDs on the workers so
# that no role gets the same one everywhere by chance.
$workers[$_]->safe_psql('postgres',
	'SELECT pg_catalog.lo_unlink(pg_catalog.lo_create(0)) FROM generate_series(1, ' . (50 * ($_ + 1)) . ')')
  for 0 .. 1;

# Rows from before the tables were distributed: a hold and a completed key
$coord->safe_psql('postgres', q{
	CREATE EXTENSION payments;
	SELECT payments.stock_set('before', 10);
	SELECT payments.idempotency_begin('s', 'k-before', '{"a": 1}');
	SELECT payments.idempotency_complete('s', 'k-before', '{"paid": true}', 200);
	CREATE ROLE app LOGIN;
	GRANT payments_app TO app;
	CREATE ROLE app2 LOGIN;
	GRANT payments_app TO app2;
	-- rows that name roles: their OIDs differ from node to node
	SELECT payments.restrict_scope('app-only', ARRAY['app']::regrole[]);
	CREATE FUNCTION public.as_app(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
	    IF current_user <> 'app' THEN
	        RAISE EXCEPTION 'run as %', current_user;
	    END IF;
	END $$;
	SET ROLE app;
	SELECT payments.enqueue_compensation('public.as_app(jsonb)', '{"n": "before"}',
	                                     run_at => now() + interval '1 day');
	SELECT payments.tcc_try('g-before', 'b1', '{}');
	RESET ROLE;
	-- a role whose name needs quoting, and one that is gone
	CREATE ROLE "Odd'%Role" LOGIN;
	GRANT payments_app TO "Odd'%Role";
	CREATE ROLE gone LOGIN;
	GRANT payments_app TO gone;
	GRANT EXECUTE ON FUNCTION public.as_app(jsonb) TO "Odd'%Role", gone;
	SET ROLE "Odd'%Role";
	SELECT payments.tcc_try('g-odd', 'b1', '{}');
	SET ROLE gone;
	SELECT payments.enqueue_compensation('public.as_app(jsonb)', '{"n": "gone"}',
	                                     run_at => now() + interval '1 day');
	RESET ROLE;
	REVOKE ALL ON FUNCTION public.as_app(jsonb) FROM gone;
	REVOKE payments_app FROM gone;
	DROP ROLE gone;
});
my $before_id = $coord->safe_psql('postgres',
	q{SELECT payments.reserve('order-before', 'before', 4)});

# psql_error(node, sql): the SQLSTATE and message of the error sql raises
sub psql_error
{
	my ($node, $sql) = @_;
	my ($ret, $out, $err) = $node->psql('postgres',
		"\\set VERBOSITY verbose\n$sql", on_error_stop => 1);
	return $ret == 0 ? 'no error' : $err;
}

like(psql_error($workers[0], 'SELECT payments.distribute()'),
	qr/payments\.distribute\(\) must run on the Citus coordinator/,
	'distribute() refuses to run on a worker');
like(psql_error($coord, 'SELECT payments.distribute(0)'),
	qr/22023: shard_count must be between 1 and 64000/, 'distribute() refuses a shard count of 0');
like(psql_error($coord, 'SELECT payments.undistribute()'),
	qr/55000: the tables of extension "payments" are not distributed/,
	'undistribute() refuses tables that are not distributed');
like(psql_error($coord, 'SET ROLE app; SELECT payments.distribute()'),
	qr/42501: permission denied for function distribute/,
	'an application role may not distribute');

# A worker's own rows would not move to the shards: refused while any
$workers[1]->safe_psql('postgres', q{SELECT payments.stock_set('worker-only', 3)});
like(psql_error($coord, 'SELECT payments.distribute(8)'),
	qr/55000: worker nodes hold rows of the tables payments\.distribute\(\) distributes.*DETAIL:  Rows are on [^ ]+:\d+ /s,
	'distribute() refuses while a worker holds rows in its own tables');
$workers[1]->safe_psql('postgres', q{DELETE FROM payments.stock_slots; DELETE FROM payments.stock});

$coord->safe_psql('postgres', 'SELECT payments.distribute(8)');
like(psql_error($coord, 'SELECT payments.distribute(8)'),
	qr/55000: the tables of extension "payments" are already distributed/,
	'distribute() refuses to run twice');

is($coord->safe_psql('postgres', q{
	SELECT string_agg(logicalrelid::text || ':' || partmethod::text, ',' ORDER BY logicalrelid::text)
	  FROM pg_dist_partition}),
	'payments.compensation_attempts:h,payments.compensations:h,payments.external_handlers:n,'
	  . 'payments.idempotency_keys:h,payments.idempotency_scopes:n,payments.reservations:h,'
	  . 'payments.state_machine_definitions:n,payments.stock:h,payments.stock_slots:h,'
	  . 'payments.tcc_fence:h',
	'the tables are distributed by key; scopes, machines and external handlers are reference tables');
is($coord->safe_psql('postgres', q{
	SELECT count(DISTINCT colocationid) FROM pg_dist_partition WHERE partmethod = 'h'}),
	'1', 'the distributed tables are co-located');
is($coord->safe_psql('postgres', q{
	SELECT count(*) FROM pg_dist_shard s JOIN pg_dist_placement p USING (shardid)
	 WHERE s.logicalrelid = 'payments.stock'::regclass
	 GROUP BY p.groupid ORDER BY 1 LIMIT 1}),
	'4', 'each worker holds shards of its own');

# --- the rows from before ---

is($coord->safe_psql('postgres',
		"SELECT payments.confirm_reservation($before_id, 'before')"),
	't', 'a hold from before distribute() is confirmed by id and SKU');
is($coord->safe_psql('postgres',
		q{SELECT outcome || ' ' || response FROM payments.idempotency_begin('s', 'k-before', '{"a": 1}')}),
	'replayed {"paid": true}', 'a key completed before distribute() replays');
is($coord->safe_psql('postgres', q{
	SELECT sum(pg_relation_size(logicalrelid)) FROM pg_dist_partition}),
	'0', 'no row stays behind in the shells on the coordinator');

# Rows that name roles keep naming them on the node of their shard.
$coord->safe_psql('postgres', q{
	UPDATE payments.compensations SET next_attempt_at = now() WHERE payload->>'n' = 'before'});
ok( $coord->poll_query_until('postgres', q{
		SELECT status FROM payments.compensations WHERE payload->>'n' = 'before'}, 'succeeded'),
	'an item queued by an application role before distribute() runs as that role on its worker');
is($coord->safe_psql('postgres', q{
	SET citus.enable_binary_protocol = off;
	SELECT (SELECT owner::text FROM payments.tcc_fence WHERE gid = 'g-before') || ' '
	    || (SELECT roles::text FROM payments.idempotency_scopes WHERE scope = 'app-only')}),
	'app {app}', 'a TCC branch and a scope restriction from before name their role on every node');
is($coord->safe_psql('postgres', q{
	SET citus.enable_binary_protocol = off;
	SELECT (SELECT owner::text FROM payments.tcc_fence WHERE gid = 'g-odd') || ' '
	    || (SELECT enqueued_by::text FROM payments.compensations WHERE payload->>'n' = 'gone')}),
	q{"Odd'%Role" -}, 'a role whose name needs quoting too; a role that is gone names none');
for my $node (@workers)
{
	like($node->safe_psql('postgres', qq{
		SET ROLE app; SELECT outcome FROM payments.idempotency_begin('app-only', 'k-${\ $node->name}', '{}')}),
		qr/^started$/, 'the restricted scope admits its role on ' . $node->name);
	like(psql_error($node, q{
		SET ROLE app2; SELECT payments.idempotency_begin('app-only', 'k-x', '{}')}),
		qr/42501: permission denied for idempotency scope "app-only"/,
		'and refuses another role there');
}

# --- every SKU is served on the node of its shard ---

my @skus = map { "sku-$_" } 1 .. 40;
$coord->safe_psql('postgres', join '',
	map { "SELECT payments.stock_set('$_', 5);\n" } @skus);
my $i = 0;
for my $sku (@skus)
{
	my $node = $nodes[ $i++ % 3 ];
	$node->safe_psql('postgres', "SELECT payments.reserve('spread', '$sku', 2)");
}
is($coord->safe_psql('postgres', q{
	SELECT count(*) || ' ' || sum(held) || ' ' || sum(available)
	  FROM payments.stock_levels WHERE sku LIKE 'sku-%'}),
	'40 80 120', 'a reserve of each of 40 SKUs, from any node, held on its shard');
# A query by SKU reads only the shard Citus assigns the SKU: a hold
# written anywhere else would be missed.
my $found = 0;
$found += $coord->safe_psql('postgres',
	"SELECT count(*) FROM payments.reservations WHERE sku = '$_'")
  for @skus;
is($found, 40, 'every hold is in the shard Citus assigns its SKU');

# A key that hashes to -1 is a key like any other
is($coord->safe_psql('postgres', q{SELECT hashtext('K1FRpdba')}), '-1', 'the key K1FRpdba hashes to -1');
$coord->safe_psql('postgres', q{SELECT payments.stock_set('K1FRpdba', 5)});
like($coord->safe_psql('postgres', q{SELECT payments.reserve('minus-one', 'K1FRpdba', 2)}),
	qr/^\d+$/, 'and is reserved on its shard');

# --- no oversell: one SKU, clients on every node at once ---

$coord->safe_psql('postgres', q{SELECT payments.stock_set('hot', 100, slots => 4)});
my $attempts = 60;
my $script = join '', map { "SELECT payments.reserve('hot-$_', 'hot', 1);\n" } 1 .. $attempts;
# start_psql(node, input, \$out, \$err): a psql session on the node, which
# goes on past errors, started on input (a reference to a string, which
# IPC::Run consumes and feeds only while the run is pumped or finished)
sub start_psql
{
	my ($node, $input, $out, $err) = @_;
	return IPC::Run::start(
		[ 'psql', '-X', '-At', '-v', 'ON_ERROR_STOP=0', '-d', $node->connstr('postgres') ],
		'<', $input, '>', $out, '2>', $err);
}

# run_on_all(sql): run sql in one psql per node, all at once; its
# standard output and error, per node
sub run_on_all
{
	my ($sql) = @_;
	my (@runs, @ins, @outs, @errs);
	for my $n (0 .. $#nodes)
	{
		# each run gets a copy of its own
		($ins[$n], $outs[$n], $errs[$n]) = ($sql, '', '');
		push @runs, start_psql($nodes[$n], \$ins[$n], \$outs[$n], \$errs[$n]);
	}
	$_->finish for @runs;
	return (\@outs, \@errs);
}

my ($outs, $errs) = run_on_all($script);
my @outs = @$outs;
my @errs = @$errs;
my $held = 0;
my $short = 0;
for my $n (0 .. $#nodes)
{
	$held += () = $outs[$n] =~ /^\d+$/mg;
	$short += () = $errs[$n] =~ /not enough stock|insufficient/g;
}
is($held, 100, '180 concurrent reserves of 100 units from three nodes hold exactly 100');
is($held + $short, 3 * $attempts, 'every other reserve was refused for want of stock')
  or diag join "\n", @errs;
is($coord->safe_psql('postgres', q{
	SELECT on_hand || ' ' || held || ' ' || available FROM payments.stock_levels WHERE sku = 'hot'}),
	'100 100 0', 'the hot SKU is sold out, never oversold');
is($coord->safe_psql('postgres', q{
	SELECT count(*) = count(DISTINCT id) FROM payments.reservations}),
	't', 'hold ids are unique across the nodes that inserted them');

# --- one effect per idempotency key, from three nodes at once ---

($outs, $errs) = run_on_all(
	q{SELECT outcome FROM payments.idempotency_begin('pay', 'once', '{"amount": 5}');});
my $started = () = join('', @$outs) =~ /^started$/mg;
my $in_use = () = join('', @$errs) =~ /is in use by another flow/g;
is($started, 1, 'one of three concurrent begins of one key starts it');
is($in_use, 2, 'the others are told the key is in use');
$workers[1]->safe_psql('postgres',
	q{SELECT payments.idempotency_complete('pay', 'once', '{"charged": 5}', 201)});
for my $node (@nodes)
{
	is($node->safe_psql('postgres',
			q{SELECT outcome || ' ' || response_code FROM payments.idempotency_begin('pay', 'once', '{"amount": 5}')}),
		'replayed 201', 'a retry through ' . $node->name . ' replays the one response');
}
like(psql_error($workers[0],
		q{SELECT payments.idempotency_begin('pay', 'once', '{"amount": 6}')}),
	qr/PM001/, 'the key reused for another request is refused on any node');

# --- TCC branches, by gid, from any node ---

is(join(',', map { $_->safe_psql('postgres', q{SELECT payments.tcc_try('g-1', 'b-1')}) } @nodes),
	'proceed,duplicate,duplicate', 'one Try of a branch proceeds, from whichever node, the others are duplicates');
is($workers[0]->safe_psql('postgres', q{SELECT payments.tcc_confirm('g-1', 'b-1')}),
	'proceed', 'its Confirm proceeds');
like(psql_error($workers[1], q{SELECT payments.tcc_cancel('g-1', 'b-1')}),
	qr/TCC branch "b-1" of transaction "g-1" was confirmed/,
	'a Cancel after it is refused on another node');
is($coord->safe_psql('postgres', q{SELECT payments.tcc_cancel('g-2', 'b-1')}),
	'empty', 'a Cancel before any Try is an empty rollback');
is($workers[1]->safe_psql('postgres', q{SELECT payments.tcc_try('g-2', 'b-1')}),
	'suspended', 'and the late Try is suspended, on any node');
is($coord->safe_psql('postgres', q{
	SELECT string_agg(gid || ':' || state, ',' ORDER BY gid) FROM payments.tcc_branches
	 WHERE gid IN ('g-1', 'g-2')}),
	'g-1:confirmed,g-2:suspended', 'tcc_branches shows both, over every shard');

# --- scope restrictions hold on every node ---

$coord->safe_psql('postgres',
	q{SELECT payments.restrict_scope('vault', ARRAY['postgres']::regrole[])});
for my $node (@nodes)
{
	like(psql_error($node,
			q{SET ROLE app; SELECT payments.idempotency_begin('vault', 'k', '{}')}),
		qr/42501: permission denied for idempotency scope "vault"/,
		'a restricted scope is refused to other roles through ' . $node->name);
}

# --- a NULL key: the function's own error, not Citus's crash ---

# Citus 13 hashes a delegated call's key without looking for NULL and the
# backend crashes, which restarts every session of the node; a session
# open across the calls shows that none did.
my $witness = $coord->background_psql('postgres');
$witness->query_safe('SELECT 1');
for my $case (
	[ q{SELECT payments.reserve('o', NULL, 1)}, 'SKU' ],
	[ q{SELECT payments.reserve(order_ref => 'o', sku => NULL, qty => 1)}, 'SKU' ],
	[ q{SELECT payments.confirm_reservation(1, NULL::text || NULL)}, 'SKU' ],
	[ q{SELECT payments.stock_adjust(NULL, 1)}, 'SKU' ],
	[ q{SELECT * FROM payments.idempotency_begin('s', NULL, '{}')}, 'idempotency key' ],
	[ q{SELECT payments.tcc_try(NULL, 'b')}, 'gid' ],
	[ q{PREPARE p(text) AS SELECT payments.release_reservation(1, $1); EXECUTE p(NULL)}, 'SKU' ],
	[ q{PREPARE p(text) AS SELECT payments.reserve('o', upper($1), 1); EXECUTE p(NULL)}, 'SKU' ],
	[ q{SELECT payments.reserve('o', s, 1) FROM (SELECT NULL::text AS s) x}, 'SKU' ],
	[ q{WITH c AS (SELECT NULL::text AS s) SELECT payments.reserve('o', s, 1) FROM c}, 'SKU' ],
	[ q{SELECT payments.reserve('o', v.s, 1) FROM (VALUES (NULL::text)) v(s)}, 'SKU' ],
	[ q{CREATE FUNCTION pg_temp.w(text) RETURNS bigint LANGUAGE sql
	    AS $$ SELECT payments.reserve('o', $1, 1) $$; SELECT pg_temp.w(NULL)}, 'SKU' ])
{
	like(psql_error($coord, $case->[0]), qr/22004: $case->[1] must not be null/,
		"a NULL key is refused: $case->[0]");
}
is($coord->safe_psql('postgres', q{SELECT count(*) FROM (SELECT payments.reserve('o', NULL, 1) WHERE false) x}),
	'0', 'a call that never runs is not refused');
is($witness->query_safe('SELECT 2'), '2', 'and no backend crashed');
$witness->quit;

# --- two calls in one statement are not sent on: refused, never wrong ---

like(psql_error($coord,
		q{SELECT payments.reserve('x', 'sku-1', 1), payments.reserve('x', 'sku-2', 1)}),
	qr/0A000: the shard of SKU "sku-\d" is not on this node/,
	'a call Citus does not send on is refused on the coordinator');
is($coord->safe_psql('postgres', q{SELECT count(*) FROM payments.reservations WHERE order_ref = 'x'}),
	'0', 'and held nothing');

# --- a transaction over SKUs on both workers commits on both or neither ---

my ($a_sku, $b_sku) = split /\|/, $coord->safe_psql('postgres', q{
	SELECT min(sku) FILTER (WHERE g = 1), min(sku) FILTER (WHERE g = 2)
	  FROM (SELECT s.sku, p.groupid AS g FROM payments.stock s
	          JOIN pg_dist_placement p
	            ON p.shardid = get_shard_id_for_distribution_column('payments.stock', s.sku)
	         WHERE s.sku LIKE 'sku-%') x});
$coord->psql('postgres', qq{
	BEGIN;
	SELECT payments.reserve('both', '$a_sku', 1);
	SELECT payments.reserve('both', '$b_sku', 1);
	ROLLBACK;});
is($coord->safe_psql('postgres', q{SELECT count(*) FROM payments.reservations WHERE order_ref = 'both'}),
	'0', 'a rolled-back transaction over two workers held nothing on either');
$coord->safe_psql('postgres', qq{
	BEGIN;
	SELECT payments.reserve('both', '$a_sku', 1);
	SELECT payments.reserve('both', '$b_sku', 1);
	COMMIT;});
is($coord->safe_psql('postgres', q{SELECT count(*) FROM payments.reservations WHERE order_ref = 'both'}),
	'2', 'a committed one holds on both');

# --- calls over several SKUs, and by id alone ---

$coord->safe_psql('postgres', "SELECT payments.stock_adjust('$_', 20)") for ($a_sku, $b_sku);
my $items = qq{[{"sku": "$a_sku", "qty": 2}, {"sku": "$b_sku", "qty": 1}]};
my $ids = $coord->safe_psql('postgres', "SELECT payments.reserve('multi', '$items')");
like($ids, qr/^\{\d+,\d+\}$/, 'a reserve of items on two workers returns both ids');
is($coord->safe_psql('postgres', q{
	SELECT string_agg(sku || ':' || qty, ',' ORDER BY qty DESC) FROM payments.reservations
	 WHERE order_ref = 'multi' AND state = 'held'}),
	"$a_sku:2,$b_sku:1", 'and holds each item on its SKU');
like(psql_error($coord,
		qq{SELECT payments.reserve('multi-bad', '[{"sku": "$a_sku", "qty": 1}, {"sku": "no-such-sku", "qty": 1}]')}),
	qr/SKU "no-such-sku" does not exist/, 'an unknown SKU among the items fails the reserve');
is($coord->safe_psql('postgres', q{SELECT count(*) FROM payments.reservations WHERE order_ref = 'multi-bad'}),
	'0', 'and none of its items is held, on any node');
like(psql_error($coord, qq{
	SELECT payments.reserve('failed-' || g, '$items') FROM generate_series(1, 2) AS g
	 WHERE 1 / (g - 2) IS NOT NULL}),
	qr/22012: division by zero/, 'a statement that reserves items on two workers and then fails');
$ids = $coord->safe_psql('postgres', "SELECT payments.reserve('multi-ok', '$items')");
like(psql_error($coord, qq{
	SELECT payments.confirm_order('multi-ok') FROM generate_series(1, 2) AS g
	 WHERE 1 / (g - 2) IS NOT NULL}),
	qr/22012: division by zero/, 'and one that confirms an order on two workers and then fails');
is($coord->safe_psql('postgres', q{
	SELECT count(*) FILTER (WHERE order_ref LIKE 'failed-%') || ' '
	    || count(*) FILTER (WHERE order_ref = 'multi-ok' AND state = 'held')
	  FROM payments.reservations}),
	'0 2', 'leave no hold and no confirmation behind on either worker');
is($coord->safe_psql('postgres', q{SELECT payments.confirm_order('multi')}),
	'2', 'confirm_order confirms the holds of an order on two workers');
is($coord->safe_psql('postgres', q{SELECT payments.confirm_order('multi')}),
	'0', 'and again, nothing more');
like(psql_error($coord, q{SELECT payments.release_order('multi')}),
	qr/PM104: cannot release order "multi"/, 'release_order refuses a confirmed order');
$coord->safe_psql('postgres', "SELECT payments.reserve('gone', '$items')");
is($coord->safe_psql('postgres', q{SELECT payments.release_order('gone')}),
	'2', 'release_order releases the holds of an order on two workers');
is($coord->safe_psql('postgres', q{
	SELECT count(*) FROM payments.reservations WHERE order_ref = 'gone' AND state = 'released'}),
	'2', 'both are released');
like(psql_error($coord, q{SELECT payments.confirm_order('nobody')}),
	qr/PM105: order "nobody" has no reservations/, 'an unknown order is refused');

my $one = $coord->safe_psql('postgres', "SELECT payments.reserve('by-id', '$b_sku', 1)");
my $two = $coord->safe_psql('postgres', "SELECT payments.reserve('by-id', '$a_sku', 1)");
is($coord->safe_psql('postgres', "SELECT payments.confirm_reservation($one)"),
	't', 'confirm_reservation(id) finds the hold on its worker');
is($coord->safe_psql('postgres', "SELECT payments.release_reservation($two)"),
	't', 'release_reservation(id) too');
is($coord->safe_psql('postgres', q{
	SELECT string_agg(state, ',' ORDER BY state) FROM payments.reservations WHERE order_ref = 'by-id'}),
	'confirmed,released', 'each hold changed once');
like(psql_error($coord, 'SELECT payments.confirm_reservation(12345)'),
	qr/PM105: reservation 12345 does not exist/, 'an unknown id is refused');
like(psql_error($coord, "SELECT payments.confirm_reservation($one, '$b_sku-other')"),
	qr/does not exist/, 'a hold named with another SKU is unknown');

# Orders over both workers, each confirmed by one session and released by
# another at the same time: every order ends all confirmed or all
# released, never split across the nodes.
$coord->safe_psql('postgres', "SELECT payments.stock_adjust('$_', 200)") for ($a_sku, $b_sku);
$coord->safe_psql('postgres', join '',
	map { "SELECT payments.reserve('race-$_', '$items');\n" } 1 .. 20);
my ($confirms, $releases) = ('', '');
for my $n (1 .. 20)
{
	$confirms .= "SELECT payments.confirm_order('race-$n');\n";
	$releases .= "SELECT payments.release_order('race-$n');\n";
}
my @racers;
my @race_out = ('', '');
my @race_err = ('', '');
push @racers, start_psql($coord, \$confirms, \$race_out[0], \$race_err[0]);
push @racers, start_psql($coord, \$releases, \$race_out[1], \$race_err[1]);
$_->finish for @racers;
is($coord->safe_psql('postgres', q{
	SELECT count(*) FROM (SELECT order_ref FROM payments.reservations
	  WHERE order_ref LIKE 'race-%' GROUP BY order_ref HAVING count(DISTINCT state) <> 1) x}),
	'0', 'racing confirm_order and release_order leave no order split between states');
is($coord->safe_psql('postgres', q{
	SELECT count(*) FROM payments.reservations WHERE order_ref LIKE 'race-%' AND state = 'held'}),
	'0', 'and every order was settled one way');
unlike(join('', @race_err), qr/deadlock|XX000|terminat/, 'without a deadlock or an internal error')
  or diag join "\n", @race_err;

# --- a shard move while reserves run: no committed hold is lost ---

# A move copies the SKU's co-located shards to the other worker with
# writes blocked; a reserve on the old placement either commits before
# the copy or waits for the move and is refused (0A000), never written to
# a shard that is then dropped.
$coord->safe_psql('postgres', q{SELECT payments.stock_set('mover', 1000000, slots => 4)});
my $mover = $coord->safe_psql('postgres',
	q{SELECT get_shard_id_for_distribution_column('payments.stock', 'mover')});
my ($from_host, $from_port, $to_host, $to_port) = split /\|/, $coord->safe_psql('postgres', qq{
	SELECT s.nodename, s.nodeport, t.nodename, t.nodeport
	  FROM pg_dist_placement p JOIN pg_dist_node s ON s.groupid = p.groupid,
	       pg_dist_node t
	 WHERE p.shardid = $mover AND t.groupid NOT IN (0, p.groupid) AND t.isactive});
# (from a file, which psql reads while the test polls: standard input is
# fed only while the run is pumped)
my $moves_file = $PostgreSQL::Test::Utils::tmp_check . '/moving.sql';
append_to_file($moves_file,
	join '', map { "SELECT payments.reserve('moving', 'mover', 1);\n" } 1 .. 4000);
my ($move_out, $move_err) = ('', '');
my $mover_run = start_psql($coord, $moves_file, \$move_out, \$move_err);
$coord->poll_query_until('postgres',
	q{SELECT count(*) >= 200 FROM payments.reservations WHERE order_ref = 'moving'})
  or die 'the reserves did not start';
$coord->safe_psql('postgres', qq{
	SELECT citus_move_shard_placement($mover, '$from_host', $from_port, '$to_host', $to_port,
	                                  shard_transfer_mode => 'block_writes')});
$mover_run->finish;
my $committed = () = $move_out =~ /^\d+$/mg;
is($coord->safe_psql('postgres', q{SELECT count(*) FROM payments.reservations WHERE order_ref = 'moving'}),
	$committed, "each of the $committed reserves that returned an id during the move kept its hold");
is($coord->safe_psql('postgres', q{SELECT on_hand - available FROM payments.stock_levels WHERE sku = 'mover'}),
	$committed, 'and the stock it took: the ledger still balances');
unlike($move_err, qr/XX000|terminat|could not/, 'the reserves the move held back failed cleanly, if any')
  or diag $move_err;
like($coord->safe_psql('postgres', q{SELECT payments.reserve('moved', 'mover', 1)}),
	qr/^\d+$/, 'after the move, the SKU is served on its new node');

# --- expiry: each node's worker on its own shards ---

my $levels = q{SELECT sum(held) || ' ' || sum(available) FROM payments.stock_levels WHERE sku LIKE 'sku-%'};
my $before_brief = $coord->safe_psql('postgres', $levels);
$coord->safe_psql('postgres', join '',
	map { "SELECT payments.reserve('brief', '$_', 1, '1 second');\n" } @skus[ 0 .. 9 ]);
ok( $coord->poll_query_until('postgres', q{
		SELECT count(*) FILTER (WHERE state = 'expired') = 10
		   AND count(*) FILTER (WHERE state = 'held') = 0
		  FROM payments.reservations WHERE order_ref = 'brief'}),
	'the workers of the nodes expire lapsed holds on their shards');
is($coord->safe_psql('postgres', $levels), $before_brief, 'and their stock is back');
for my $node (@nodes)
{
	is($node->safe_psql('postgres',
			q{SELECT count(*) FROM payments.worker_status() WHERE state = 'unserved'}),
		'0', 'the worker serves the database on ' . $node->name);
}

# --- the state guard on a distributed table ---

# A machine defined before distribute() is read on every node; the guard
# runs on the node of each row, whose history stays next to the row's
# shard and names the distributed table.
$coord->safe_psql('postgres', q{
	SELECT payments.define_state_machine('order',
	    '{"new": ["paid", "cancelled"], "paid": ["refunded"], "cancelled": [], "refunded": []}',
	    ARRAY['new']);
	CREATE TABLE orders (id bigint PRIMARY KEY, status text NOT NULL);
	SELECT create_distributed_table('orders', 'id', colocate_with => 'none');
	SELECT payments.guard_state('orders', 'status', 'order');
	INSERT INTO orders SELECT i, 'new' FROM generate_series(1, 20) AS i;
	UPDATE orders SET status = 'paid' WHERE id <= 10;
	UPDATE orders SET status = 'cancelled' WHERE id > 10;
});
for my $case (
	[ q{UPDATE orders SET status = 'paid' WHERE id = 11},
	  qr/PM201: invalid transition from "cancelled" to "paid" for column "status" of relation "orders"/ ],
	[ q{UPDATE orders SET status = 'new' WHERE id = 1},
	  qr/PM201: invalid transition from "paid" to "new"/ ],
	[ q{INSERT INTO orders VALUES (99, 'paid')},
	  qr/PM201: invalid initial state "paid"/ ])
{
	like(psql_error($coord, $case->[0]), $case->[1],
		"the guard refuses on the row's node: $case->[0]");
}
is($coord->safe_psql('postgres',
		q{SELECT string_agg(status || ':' || n, ',' ORDER BY status) FROM (SELECT status, count(*) AS n FROM orders GROUP BY 1) x}),
	'cancelled:10,paid:10', 'the refused writes changed no row');

my $moves = $coord->safe_psql('postgres', q{
	SELECT sum(n) FROM run_command_on_all_nodes(
	  $$SELECT count(*) FROM payments.state_history WHERE from_state IS NOT NULL$$) AS r,
	  LATERAL (SELECT r.result::int AS n) x});
is($moves, '20', 'the history has each of the 20 moves once, over the nodes');
is($coord->safe_psql('postgres', q{
	SELECT string_agg(DISTINCT r.result, ',') FROM run_command_on_all_nodes(
	  $$SELECT coalesce(string_agg(DISTINCT tbl::text, ','), 'none') FROM payments.state_history$$) AS r
	 WHERE r.result <> 'none'}),
	'orders', 'and names the distributed table, not its shards');
my $misplaced = 0;
for my $n (1 .. 2)
{
	# every history row on a worker is about a row whose shard that worker holds
	$misplaced += $workers[ $n - 1 ]->safe_psql('postgres', qq{
		SELECT count(*) FROM payments.state_history h
		 WHERE NOT EXISTS (SELECT FROM pg_dist_placement p
		    JOIN pg_dist_local_group l ON l.groupid = p.groupid
		   WHERE p.shardid = get_shard_id_for_distribution_column('orders', h.row_key::bigint))});
}
is($misplaced, 0, 'each history row is on the node of its row');

# A machine redefined on the coordinator is read anew on every node, also
# by the worker sessions Citus keeps open.
$coord->safe_psql('postgres', q{
	SELECT payments.define_state_machine('order',
	    '{"new": ["paid", "cancelled"], "paid": ["refunded"], "cancelled": ["new"], "refunded": []}',
	    ARRAY['new']);
	UPDATE orders SET status = 'new' WHERE id = 11;
});
is($coord->safe_psql('postgres', 'SELECT status FROM orders WHERE id = 11'),
	'new', 'a move the redefined machine allows is taken on the row\'s node');

# --- the compensation queue, distributed by flow ---

# Items queued on the coordinator go to the shards of their flows, on both
# workers, and each node's worker runs the items of its own shards; a
# handler's writes to a distributed table commit with its item.
# where each node's log stands: the queue's work must log no error of a
# worker task from here on
my %log_from = map { $_->name => -s $_->logfile } @nodes;
$coord->safe_psql('postgres', q{
	CREATE TABLE effects (n text PRIMARY KEY, times int NOT NULL, port text);
	SELECT create_distributed_table('effects', 'n');
	CREATE FUNCTION effect(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
	DECLARE
	    marker text;
	BEGIN
	    -- a file, which outlives a crash of its node, marks the sleeper's
	    -- first attempt (a superuser's item)
	    IF p->>'n' = 'sleeper' THEN
	        marker := current_setting('data_directory') || '/sleeper.marker';
	        IF pg_stat_file(marker, true) IS NULL THEN
	            EXECUTE format('COPY (SELECT 1) TO %L', marker);
	            PERFORM pg_sleep(600);
	        END IF;
	    END IF;
	    IF p ? 'by' AND p->>'by' <> current_user THEN
	        RAISE EXCEPTION 'run as %, queued by %', current_user, p->>'by';
	    END IF;
	    IF p ? 'fail' THEN
	        RAISE EXCEPTION 'failing on purpose';
	    END IF;
	    EXECUTE format('INSERT INTO public.effects VALUES (%L, 1, current_setting(''port''))'
	                   ' ON CONFLICT (n) DO UPDATE SET times = effects.times + 1', p->>'n');
	END $$;
	GRANT EXECUTE ON FUNCTION effect(jsonb) TO app;
	GRANT ALL ON effects TO app;
	SELECT payments.enqueue_compensation('effect(jsonb)', jsonb_build_object('n', 'q' || i))
	  FROM generate_series(1, 20) AS i;
});
ok( $coord->poll_query_until('postgres',
		q{SELECT count(*) FROM payments.compensations WHERE status = 'succeeded'
		   AND payload->>'n' LIKE 'q%'}, '20'),
	'twenty items queued on the coordinator all succeed');
is($coord->safe_psql('postgres', q{
	SELECT count(*) || ' ' || sum(times) || ' ' || count(DISTINCT port)
	  FROM effects WHERE n LIKE 'q%'}),
	'20 20 2', 'each once, run by the workers of both worker nodes');
# flow_port(flow): the port of the node that holds the shard of a flow
sub flow_port
{
	my ($flow) = @_;
	return $coord->safe_psql('postgres', qq{
		SELECT n.nodeport FROM pg_dist_placement p JOIN pg_dist_node n USING (groupid)
		 WHERE p.shardid = get_shard_id_for_distribution_column('payments.compensations', '$flow')});
}
my %ran_on = split /[|\n]/, $coord->safe_psql('postgres',
	q{SELECT n, port FROM effects WHERE n LIKE 'q%'});
my @misplaced = grep { flow_port($_->[1]) ne $ran_on{ $_->[0] } }
  map { [ split /\|/ ] } split /\n/, $coord->safe_psql('postgres',
	q{SELECT payload->>'n', flow FROM payments.compensations WHERE payload->>'n' LIKE 'q%'});
is(scalar(@misplaced), 0, 'each item ran on the node that holds the shard of its flow');
is($coord->safe_psql('postgres', q{
	SELECT count(*) = count(DISTINCT id) FROM payments.compensations}),
	't', 'compensation ids are unique across the nodes');

# A chain stays on the shard of its first item and runs in order; a
# failed item is retried and a chain cancelled by id from any node.
my $first = $workers[0]->safe_psql('postgres', q{
	SELECT payments.enqueue_compensation('effect(jsonb)', '{"n": "c1", "fail": true}',
	                                     max_attempts => 1)});
my $second = $workers[1]->safe_psql('postgres', qq{
	SELECT payments.enqueue_compensation('effect(jsonb)', '{"n": "c2"}', after => $first)});
ok( $coord->poll_query_until('postgres',
		"SELECT status FROM payments.compensations WHERE id = $first", 'dead'),
	'the first link of a chain fails for good');
is($coord->safe_psql('postgres', qq{
	SELECT string_agg(DISTINCT flow, ',') || ' ' || string_agg(status, ',' ORDER BY id)
	  FROM payments.compensations WHERE id IN ($first, $second)}),
	"$first dead,waiting", 'the second link is on the same flow, waiting for it');
is($coord->safe_psql('postgres', qq{
	SELECT attempt || ' ' || error || ' ' || flow FROM payments.compensation_attempts
	 WHERE compensation_id = $first}),
	"1 failing on purpose $first", 'the failed attempt is recorded next to its item');
like(psql_error($coord, qq{SET ROLE app; SELECT payments.retry_compensation($first)}),
	qr/42501: permission denied for compensation $first/,
	'another role may not retry it, whichever node holds it');
like(psql_error($coord, qq{SELECT payments.retry_compensation($second)}),
	qr/PM302: cannot retry compensation $second/,
	'a waiting item is refused a retry on its node with the usual error');
$coord->safe_psql('postgres', qq{SELECT payments.cancel_compensation($first)});
ok( $coord->poll_query_until('postgres',
		"SELECT status FROM payments.compensations WHERE id = $second", 'succeeded'),
	'cancelled from the coordinator, the first link lets the second run');
like(psql_error($coord, q{SELECT payments.cancel_compensation(987654321)}),
	qr/PM301: compensation 987654321 does not exist/,
	'an unknown id is refused as without Citus');
like(psql_error($coord, qq{
	SELECT payments.enqueue_compensation('effect(jsonb)', '{"n": "x"}', 'dk', after => $second)}),
	qr/0A000: a compensation queued after another cannot have a dedup key while the queue is distributed/,
	'a dedup key on a later link is refused: it could not stay unique');

# The item is queued in the caller's transaction on the worker: a
# statement or a transaction that fails leaves none behind.
like(psql_error($coord, q{
	SELECT payments.enqueue_compensation('effect(jsonb)', jsonb_build_object('n', 'gone-' || g))
	  FROM generate_series(1, 2) AS g WHERE 1 / (g - 2) IS NOT NULL}),
	qr/22012: division by zero/, 'a statement that queues an item and then fails');
like(psql_error($coord, q{
	BEGIN;
	SELECT payments.enqueue_compensation('effect(jsonb)', '{"n": "gone-3"}');
	SELECT payments.enqueue_compensation('effect(jsonb)', '{"n": "gone-4"}');
	SELECT 1 / (random() * 0)::int;
	COMMIT;}),
	qr/22012: division by zero/, 'a transaction that queues items and then fails');
is($coord->safe_psql('postgres', q{
	SELECT count(*) FROM payments.compensations WHERE payload->>'n' LIKE 'gone-%'}),
	'0', 'leave no item on any worker');

# One dedup key queued from three nodes at once: one item
($outs, $errs) = run_on_all(q{
	SELECT payments.enqueue_compensation('effect(jsonb)', '{"n": "dedup"}', 'the-key');});
my @ids = map { /^(\d+)$/mg } @$outs;
is(scalar(@ids) . ' ' . scalar(keys %{ { map { $_ => 1 } @ids } }), '3 1',
	'three concurrent enqueues of one dedup key from three nodes return one id')
  or diag join "\n", @$errs;
is($coord->safe_psql('postgres', q{
	SELECT count(*) FROM payments.compensations WHERE dedup_key = 'the-key'}),
	'1', 'and queue one item');

# A serialization failure at the COMMIT of a transaction on a worker that
# queued an item on the other worker: the item goes with the transaction
# (two-phase commit; in one phase the other worker would have committed it
# first).  Two serializable transactions on worker1 write skew a local
# table; the first also queues an item whose dedup key is on worker2.
$workers[0]->safe_psql('postgres', 'CREATE TABLE skew (k int)');
my ($skew_key) = grep { flow_port($_) == $workers[1]->port } map { "skew-$_" } 1 .. 200;
my $s1 = $workers[0]->background_psql('postgres', on_error_stop => 0);
my $s2 = $workers[0]->background_psql('postgres', on_error_stop => 0);
$s1->query_safe('BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT count(*) FROM skew');
$s2->query_safe('BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT count(*) FROM skew');
$s1->query_safe(qq{INSERT INTO skew VALUES (1);
	SELECT payments.enqueue_compensation('public.effect(jsonb)', '{"n": "skewed"}', '$skew_key')});
$s2->query_safe('INSERT INTO skew VALUES (2); COMMIT');
$s1->query('COMMIT');
like($s1->{stderr}, qr/could not serialize access/,
	'the transaction that queued the item fails at COMMIT');
$s1->quit;
$s2->quit;
is($coord->safe_psql('postgres',
		"SELECT count(*) FROM payments.compensations WHERE dedup_key = '$skew_key'"),
	'0', 'and its item is not kept on the other worker');

# A role has an OID of its own on each node: an application role's items,
# queued on the coordinator, run as that role on the workers, with its own
# handlers too, and it reads and changes them from the coordinator; another
# application role cannot, an operator can.
$coord->safe_psql('postgres', q{
	CREATE ROLE ops LOGIN;
	GRANT payments_operator TO ops;
	CREATE SCHEMA app_s AUTHORIZATION app;
	SET ROLE app;
	CREATE FUNCTION app_s.own(p jsonb) RETURNS void LANGUAGE sql
	    AS $$ INSERT INTO public.effects VALUES (p->>'n', 1, current_user) $$;
});
$coord->safe_psql('postgres', q{
	SET ROLE app;
	SELECT payments.enqueue_compensation('public.effect(jsonb)',
	                                     jsonb_build_object('n', 'as-app-' || i, 'by', 'app'))
	  FROM generate_series(1, 6) AS i;
	SELECT payments.enqueue_compensation('app_s.own(jsonb)', jsonb_build_object('n', 'own-' || i))
	  FROM generate_series(1, 2) AS i;
});
ok( $coord->poll_query_until('postgres', q{
		SELECT count(*) FROM payments.compensations
		 WHERE (payload->>'n' LIKE 'as-app-%' OR payload->>'n' LIKE 'own-%') AND status = 'succeeded'},
		'8'),
	'an application role\'s items queued on the coordinator succeed on the workers');
is($coord->safe_psql('postgres', q{
	SELECT count(*) || ' ' || string_agg(DISTINCT port, ',') FROM effects WHERE n LIKE 'own-%'}),
	'2 app', 'its own handler ran as that role');
my $app_item = $coord->safe_psql('postgres', q{
	SET ROLE app;
	SELECT payments.enqueue_compensation('public.effect(jsonb)', '{"n": "later", "by": "app"}',
	                                     run_at => now() + interval '1 day')});
is(join(',', map { $coord->safe_psql('postgres',
		"SET ROLE $_; SELECT coalesce(payments.compensation_status($app_item), 'none')") }
		qw(app app2 ops)),
	'pending,none,pending', 'compensation_status shows the item to its role and an operator only');
like(psql_error($coord, "SET ROLE app2; SELECT payments.cancel_compensation($app_item)"),
	qr/42501: permission denied for compensation $app_item/,
	'another application role may not cancel it from the coordinator');
like(psql_error($coord, "SET ROLE app2; SELECT payments.cancel_compensation(-7)"),
	qr/42501: permission denied for compensation -7/, 'nor learn whether an id exists');
like(psql_error($coord, "SET ROLE ops; SELECT payments.cancel_compensation(-7)"),
	qr/PM301: compensation -7 does not exist/, 'which an operator is told');
$coord->safe_psql('postgres', "SET ROLE ops; SELECT payments.cancel_compensation($app_item)");
is($coord->safe_psql('postgres', "SELECT status FROM payments.compensations WHERE id = $app_item"),
	'cancelled', 'an operator cancels it from the coordinator');

# Dates go to the other node in a form it reads alike.
my $dated = $coord->safe_psql('postgres', q{
	SET DateStyle = 'German';
	SELECT payments.enqueue_compensation('public.effect(jsonb)', '{"n": "dated"}',
	                                     run_at => '2027-01-02 10:00+00')});
is($coord->safe_psql('postgres',
		"SELECT next_attempt_at = '2027-01-02 10:00+00' FROM payments.compensations WHERE id = $dated"),
	't', 'an item queued with DateStyle German is due when it said');
$coord->safe_psql('postgres', "SELECT payments.cancel_compensation($dated)");

# Items of two roles due at once, whose handlers write one reference table:
# Citus refuses a transaction that writes a placement as one role and then
# as another, so each call of the worker runs one role's items.
$coord->safe_psql('postgres', q{
	CREATE TABLE ref_log (n text, who text);
	SELECT create_reference_table('ref_log');
	GRANT INSERT ON ref_log TO app, app2;
	CREATE FUNCTION public.log_ref(p jsonb) RETURNS void LANGUAGE sql
	    AS $$ INSERT INTO public.ref_log VALUES (p->>'n', current_user) $$;
	GRANT EXECUTE ON FUNCTION public.log_ref(jsonb) TO app, app2;
	SET ROLE app;
	SELECT payments.enqueue_compensation('public.log_ref(jsonb)',
	                                     jsonb_build_object('n', 'mixed-app-' || i),
	                                     max_attempts => 1, run_at => now() + interval '1 day')
	  FROM generate_series(1, 4) AS i;
	SET ROLE app2;
	SELECT payments.enqueue_compensation('public.log_ref(jsonb)',
	                                     jsonb_build_object('n', 'mixed-app2-' || i),
	                                     max_attempts => 1, run_at => now() + interval '1 day')
	  FROM generate_series(1, 4) AS i;
	RESET ROLE;
	UPDATE payments.compensations SET next_attempt_at = now() WHERE payload->>'n' LIKE 'mixed-%';
});
ok( $coord->poll_query_until('postgres', q{
		SELECT count(*) FROM payments.compensations
		 WHERE payload->>'n' LIKE 'mixed-%' AND finished_at IS NOT NULL}, '8'),
	'items of two roles due at once all finish');
is($coord->safe_psql('postgres', q{
	SELECT string_agg(DISTINCT status, ',') FROM payments.compensations WHERE payload->>'n' LIKE 'mixed-%'}),
	'succeeded', 'each on its only attempt');
is($coord->safe_psql('postgres', q{
	SELECT string_agg(DISTINCT split_part(n, '-', 2) || '=' || who, ',') FROM ref_log}),
	'app2=app2,app=app', 'each as its role');

# A callback routed to a guarded table on the coordinator, in a session of
# its own: the extension's relcache callbacks join Citus's (PostgreSQL
# keeps ten per session), and a conflict queues its handler.
$coord->safe_psql('postgres', q{
	CREATE TABLE shop_orders (id text PRIMARY KEY, status text NOT NULL DEFAULT 'awaiting_payment');
	SELECT payments.define_state_machine('shop_order',
	    '{"awaiting_payment": ["paid", "cancelled"], "paid": ["refunded"]}');
	SELECT payments.guard_state('shop_orders', 'status', 'shop_order');
	SELECT payments.callback_route('psp', 'paid', 'shop_orders', 'id', 'status', 'paid',
	                               on_conflict => 'public.log_ref(jsonb)');
	INSERT INTO shop_orders VALUES ('R-5'), ('R-7');
	UPDATE shop_orders SET status = 'cancelled' WHERE id = 'R-7';
});
is($coord->safe_psql('postgres', q{
	SELECT payments.receive_callback('psp', 'e-5', 'R-5', 'paid', '{}')
	    || ' ' || payments.receive_callback('psp', 'e-7', 'R-7', 'paid', '{}')}),
	'applied conflict', 'a routed callback is applied, and one for a cancelled order conflicts');
ok( $coord->poll_query_until('postgres', q{
		SELECT status FROM payments.compensations WHERE handler = 'public.log_ref(pg_catalog.jsonb)'
		   AND payload->>'payment_ref' = 'R-7'}, 'succeeded'),
	'and the conflict\'s handler runs on the node of its shard');

# Checks and expected callbacks run as items of the queue that report to
# tables of the node that defined them: refused while distributed.
like(psql_error($coord, q{SELECT payments.define_check('c1', 'SELECT 1, ''x'' WHERE false')}),
	qr/0A000: cannot define a check while the tables of extension "payments" are distributed/,
	'define_check is refused while the queue is distributed');
like(psql_error($coord, q{SELECT payments.expect_callback('psp', 'R-5', '1 hour', 'public.log_ref(jsonb)')}),
	qr/0A000: cannot expect a callback while the tables of extension "payments" are distributed/,
	'and so is expect_callback');

# The routed calls act for the role they name: no role but the owner may
# call them.
like(psql_error($coord, q{SET ROLE app;
	SELECT payments.enqueue_compensation_on_shard('1', 1, 'public.effect(jsonb)', 'postgres',
	       '{}', NULL, 1, now(), 0, 'postgres', NULL)}),
	qr/42501: permission denied for function enqueue_compensation_on_shard/,
	'an application role cannot queue an item in another role\'s name');
like(psql_error($workers[0], q{SET ROLE app;
	SELECT payments.change_compensation_on_shard('cancel', '1', 1, 0, NULL, 'postgres')}),
	qr/42501: permission denied for function change_compensation_on_shard/,
	'nor change one on a worker');

# External executors claim over every shard from the coordinator and
# complete or fail each item on its node.
$coord->safe_psql('postgres', q{
	CREATE FUNCTION outside(p jsonb) RETURNS void LANGUAGE sql AS '';
	SELECT payments.register_external_handler('outside(jsonb)');
	SELECT payments.enqueue_compensation('outside(jsonb)', jsonb_build_object('n', i))
	  FROM generate_series(1, 12) AS i;
});
my $claimed = $coord->safe_psql('postgres', q{
	SELECT string_agg(id || ':' || claim_token, ' ')
	  FROM payments.claim_compensations('outside(jsonb)', 8, '1 hour')});
my @claims = map { [ split /:/ ] } split / /, $claimed;
is(scalar(@claims), 8, 'one claim of 8 from the coordinator takes 8 items');
is(scalar(keys %{ { map { $_->[1] => 1 } @claims } }), 1, 'all with one claim token');
my %claimed_on = map { flow_port($_) => 1 } split /\n/, $coord->safe_psql('postgres',
	q{SELECT flow FROM payments.compensations WHERE status = 'running'});
is(scalar(keys %claimed_on), 2, 'from the shards of both workers');
$coord->safe_psql('postgres',
	"SELECT payments.complete_compensation($_->[0], $_->[1])") for @claims[0 .. 6];
$workers[1]->safe_psql('postgres',
	"SELECT payments.fail_compensation($claims[7][0], $claims[7][1], 'gateway down')");
is($coord->safe_psql('postgres', q{
	SELECT string_agg(status || '=' || n, ',' ORDER BY status) FROM (
	  SELECT status, count(*) AS n FROM payments.compensations
	   WHERE handler = 'public.outside(pg_catalog.jsonb)' GROUP BY status) s}),
	'pending=5,succeeded=7', 'seven completed, one failed back to pending');
like(psql_error($coord, "SELECT payments.complete_compensation($claims[0][0], $claims[0][1])"),
	qr/PM302: cannot complete compensation $claims[0][0]/,
	'a second completion with the same token is refused');

# A saga's undo, queued on the coordinator, is one chain on one shard
# and runs in reverse.
$coord->safe_psql('postgres', q{
	SELECT payments.saga_begin('trip');
	SELECT payments.saga_step('trip', 'step-' || i, 'public.effect(jsonb)',
	                          jsonb_build_object('n', 'undo-' || i)) FROM generate_series(1, 3) AS i;
	SELECT payments.saga_abort('trip', 'the hotel is full');
});
ok( $coord->poll_query_until('postgres',
		q{SELECT count(*) FROM effects WHERE n LIKE 'undo-%'}, '3'),
	'an aborted saga\'s three undos run');
is($coord->safe_psql('postgres', q{
	SELECT count(DISTINCT flow) || ' ' || string_agg(payload->>'n', ',' ORDER BY finished_at)
	  FROM payments.compensations WHERE payload->>'n' LIKE 'undo-%'}),
	'1 undo-3,undo-2,undo-1', 'on one flow, last step first');
is($coord->safe_psql('postgres', q{
	SELECT status || ' ' || steps_undone FROM payments.sagas WHERE saga_id = 'trip'}),
	'aborted 3', 'the sagas view reads its undo over the shards');
$coord->safe_psql('postgres', q{
	SET ROLE app;
	SELECT payments.saga_begin('app-trip');
	SELECT payments.saga_step('app-trip', 'hold', 'public.effect(jsonb)', '{"n": "app-undo"}');
	SELECT payments.saga_abort('app-trip', 'the guest cancelled');
});
ok( $coord->poll_query_until('postgres',
		q{SELECT count(*) FROM effects WHERE n = 'app-undo'}, '1'),
	'an application role\'s saga undo runs');
is($coord->safe_psql('postgres', q{
	SET ROLE app;
	SELECT string_agg(saga_id || ' ' || status || ' ' || steps_undone, ',') FROM payments.sagas}),
	'app-trip aborted 1', 'and the role reads its own saga, and only it, in the sagas view');
is($coord->safe_psql('postgres', q{
	SELECT count(*) FROM payments.check()
	 WHERE check_name LIKE 'compensation%' OR check_name LIKE 'saga%'}),
	'0', 'payments.check() reads the distributed queue and finds nothing wrong with it');

# Kill -9 of a worker node's worker while a handler runs: its attempt is
# charged once its process is back, and every item runs exactly once.
$coord->safe_psql('postgres', q{
	BEGIN;
	SELECT payments.enqueue_compensation('effect(jsonb)', jsonb_build_object('n', 'e' || i))
	  FROM generate_series(1, 5) AS i;
	SELECT payments.enqueue_compensation('effect(jsonb)', '{"n": "sleeper"}');
	SELECT payments.enqueue_compensation('effect(jsonb)', jsonb_build_object('n', 'e' || i))
	  FROM generate_series(6, 10) AS i;
	COMMIT;
});
my $sleeper_port = flow_port($coord->safe_psql('postgres',
	q{SELECT flow FROM payments.compensations WHERE payload->>'n' = 'sleeper'}));
my ($sleeper_node) = grep { $_->port == $sleeper_port } @workers;
$sleeper_node->poll_query_until('postgres',
	"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'payments worker' AND wait_event = 'PgSleep'",
	'1')
  or die 'the sleeping handler did not start';
my $pid = $sleeper_node->safe_psql('postgres', 'SELECT pid FROM payments.worker_status()');
kill 'KILL', $pid or die "could not kill worker $pid";
ok( $coord->poll_query_until('postgres',
		q{SELECT count(*) FROM payments.compensations WHERE status = 'succeeded'
		   AND payload->>'n' ~ '^(e[0-9]+|sleeper)$'}, '11'),
	'after kill -9 of the worker on the sleeper\'s node and the restart, every item succeeded');
is($coord->safe_psql('postgres',
		q{SELECT count(*) || ' ' || sum(times) FROM effects WHERE n ~ '^(e[0-9]+|sleeper)$'}),
	'11 11', 'and each effect reached its table exactly once');
is($coord->safe_psql('postgres', q{
	SELECT c.attempts || ' ' || a.sqlstate FROM payments.compensations c
	  JOIN payments.compensation_attempts a ON a.compensation_id = c.id AND a.flow = c.flow
	 WHERE c.payload->>'n' = 'sleeper'}),
	'2 PM304', 'the attempt the kill cut short was charged on the node of its shard');
for my $node (@nodes)
{
	unlike(slurp_file($node->logfile, $log_from{ $node->name }),
		qr/ERROR: [^\n]*\n(?:[^\n]*\n){0,3}?[^\n]*CONTEXT:  payments worker task/,
		'no task of the worker of ' . $node->name . ' failed meanwhile');
}

# --- the way back, and forth again ---

like(psql_error($coord, 'SELECT payments.undistribute()'),
	qr/55000: cannot undistribute the tables of extension "payments" while it guards distributed tables.*DETAIL:  The state guard watches public\.orders/s,
	'undistribute() refuses while a guard watches a distributed table');
my $counts = q{
	SELECT (SELECT count(*) FROM payments.stock) || ' ' || (SELECT count(*) FROM payments.reservations)
	    || ' ' || (SELECT count(*) FROM payments.idempotency_keys) || ' ' || (SELECT count(*) FROM payments.tcc_fence)
	    || ' ' || (SELECT count(*) FROM payments.idempotency_scopes)
	    || ' ' || (SELECT count(*) FROM payments.state_machine_definitions)
	    || ' ' || (SELECT count(*) FROM payments.compensations)
	    || ' ' || (SELECT count(*) FROM payments.compensation_attempts)
	    || ' ' || (SELECT count(*) FROM payments.external_handlers)
	    || ' ' || (SELECT sum(available) FROM payments.stock_slots)};
$coord->safe_psql('postgres', q{SELECT payments.unguard_state('orders', 'status')});
is(psql_error($coord, q{UPDATE orders SET status = 'anything' WHERE id = 12}), 'no error',
	'unguard_state removed the guard from every shard');
my $before_back = $coord->safe_psql('postgres', $counts);
$coord->safe_psql('postgres', 'SELECT payments.undistribute()');
is($coord->safe_psql('postgres', $counts), $before_back,
	'undistribute() keeps every row of every table');
is($coord->safe_psql('postgres', q{
	SELECT count(*) FROM pg_dist_partition WHERE logicalrelid::text LIKE 'payments.%'}),
	'0', 'and Citus manages none of them any more');
for my $node (@nodes)
{
	is($node->safe_psql('postgres', q{
		SELECT count(*) FROM pg_dist_object WHERE classid = 'pg_proc'::regclass
		   AND objid::regprocedure::text LIKE 'payments.%'}),
		'0', 'no function of the extension is distributed on ' . $node->name);
}
my $local_id = $coord->safe_psql('postgres', "SELECT payments.reserve('back', '$a_sku', 1)");
is($coord->safe_psql('postgres', "SELECT payments.confirm_reservation($local_id)"),
	't', 'a reserve and a confirm run on the coordinator\'s local tables');
is($coord->safe_psql('postgres', q{SELECT count(*) = count(DISTINCT id) FROM payments.reservations}),
	't', 'and its hold ids never meet those the workers gave');
$coord->safe_psql('postgres', 'SELECT payments.distribute(8)');
like($workers[0]->safe_psql('postgres', "SELECT payments.reserve('forth', '$b_sku', 1)"),
	qr/^\d+$/, 'after distribute() again, calls by key are sent to their nodes again');
is($coord->safe_psql('postgres', q{SELECT count(*) FROM payments.reservations WHERE order_ref IN ('back', 'forth')}),
	'2', 'and read over the shards');

# --- DROP EXTENSION leaves no shard behind ---

like(psql_error($workers[0], 'DROP EXTENSION payments'),
	qr/55000: cannot drop extension "payments" on a Citus worker while its tables are distributed/,
	'DROP EXTENSION on a worker is refused with the extension\'s own message');
like(psql_error($coord, 'SET ROLE app; DROP EXTENSION payments'),
	qr/must be owner of extension payments/, 'only the owner may drop the extension');
is($coord->safe_psql('postgres', 'SELECT count(*) FROM pg_dist_partition'),
	'13', 'and a refused DROP removed nothing from Citus');
$coord->safe_psql('postgres', 'DROP TABLE orders, effects, ref_log, shop_orders; DROP EXTENSION payments');
is($coord->safe_psql('postgres',
		'SELECT (SELECT count(*) FROM pg_dist_partition) + (SELECT count(*) FROM pg_dist_shard)'),
	'0', 'DROP EXTENSION removed the tables and their shards from Citus');
for my $node (@nodes)
{
	is($node->safe_psql('postgres', q{
		SELECT count(*) FROM pg_class
		 WHERE relname ~ '^(stock|stock_slots|reservations|idempotency_keys|idempotency_scopes|state_machine_definitions|tcc_fence|compensations|compensation_attempts|external_handlers)(_\d+)?$'}),
		'0', 'no table or shard of the extension is left on ' . $node->name);
}

done_testing();
