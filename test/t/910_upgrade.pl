# The upgrade path, as a DBA walks it: every released version is installed
# with its own library and filled through its own API; the current library
# replaces it, ALTER EXTENSION payments UPDATE takes it to the current
# version, and then
#   - every row written before the update is still there, unchanged;
#   - the catalog (pg_dump of the extension's objects, privileges included)
#     is identical to a fresh install of the current version;
#   - the regression suite passes on installs made by the update.
#
# A released version's library is built from its commit, listed in
# test/t/releases (scripts/lib.sh exports those sources beside the tree).
# The test runs a private copy of the PostgreSQL installation so that the
# released library never replaces the one the other tests use.
use strict;
use warnings;

use File::Basename qw(dirname);
use File::Copy qw(copy);
use File::Path qw(make_path remove_tree);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $releases_dir = $ENV{PAYMENTS_RELEASES} // '../releases';
my @releases;
open(my $list, '<', 'test/t/releases') or die "test/t/releases: $!";
while (<$list>)
{
	next if /^\s*(#|$)/;
	my ($version) = split;
	push @releases, $version;
}
close $list;

my @missing = grep { !-f "$releases_dir/$_/payments.control" } @releases;
plan skip_all => "sources of released versions @missing not found in $releases_dir"
  . ' (scripts/lib.sh exports them from the git history)'
  if @missing;

my $bindir = `pg_config --bindir`;
my $pkglibdir = `pg_config --pkglibdir`;
my $sharedir = `pg_config --sharedir`;
chomp($bindir, $pkglibdir, $sharedir);

my $current = current_version();

# A copy of the installation, laid out as the original so that its binaries
# find their library and share directories relative to themselves.
my $root = PostgreSQL::Test::Utils::tempdir();
my $prefix = common_prefix($bindir, $pkglibdir, $sharedir);
my $install_path = $root . substr(dirname($bindir), length($prefix));
for my $dir ($bindir, $pkglibdir, $sharedir)
{
	my $target = $root . substr($dir, length($prefix));
	make_path(dirname($target));
	system('cp', '-a', $dir, $target) == 0 or die "could not copy $dir";
}
my $copy_pkglibdir = $root . substr($pkglibdir, length($prefix));
my $copy_extdir = $root . substr($sharedir, length($prefix)) . '/extension';

for my $release (@releases)
{
	upgrade_from($release);
}

done_testing();

sub upgrade_from
{
	my ($release) = @_;
	my $build = "$root/build-$release";

	note "building the $release library";
	system('cp', '-a', "$releases_dir/$release", $build) == 0
	  or die "could not copy the $release sources";
	run_log([ 'make', '-s', '-C', $build, 'with_llvm=no' ])
	  or die "could not build the $release library";

	my ($built) = grep { -f } ("$build/payments--$release.sql",
		"$build/src/sql/payments--$release.sql");
	is(slurp_file("src/sql/payments--$release.sql"), slurp_file($built),
		"$release: src/sql/payments--$release.sql is the script as released");

	# Only the released files: its library, its control file and scripts.
	unlink glob("$copy_extdir/payments*");
	install_files($build, $build);

	my $node = PostgreSQL::Test::Cluster->new("upgrade_$release",
		install_path => $install_path);
	$node->init(extra => [ '--no-locale', '--encoding=UTF8' ]);
	# As the suite's clusters are, but with the worker on until the suite.
	$node->append_conf('postgresql.conf',
		slurp_file('test/regress.conf') . "payments.worker_enabled = on\n");
	$node->start;

	# app is filled and used; bare holds only the extension, to compare
	# its catalog with a fresh install's.
	for my $db ('app', 'bare')
	{
		$node->safe_psql('postgres', "CREATE DATABASE $db");
		$node->safe_psql($db, 'CREATE EXTENSION payments');
	}
	is($node->safe_psql('app',
			"SELECT extversion FROM pg_extension WHERE extname = 'payments'"),
		$release, "$release: installed with its own library");
	fill($node, $release);
	my %columns = released_columns($node, 'app');
	my %before = table_contents($node, 'app', \%columns);

	# The package upgrade: the current library and scripts replace the
	# released ones, then the server restarts.
	$node->stop;
	install_files('.', 'src/sql');
	$node->start;

	my ($ret, $out, $err) = $node->psql('app',
		"SELECT payments.stock_set('upgrade-window', 1)");
	like($err, qr/version "\Q$release\E" is installed in database "app", but the loaded library is version "\Q$current\E".*\n.*HINT:  Run ALTER EXTENSION payments UPDATE/,
		"$release: the current library refuses the old schema and names the fix");

	for my $db ('app', 'bare')
	{
		$node->safe_psql($db, 'ALTER EXTENSION payments UPDATE');
		is($node->safe_psql($db,
				"SELECT extversion FROM pg_extension WHERE extname = 'payments'"),
			$current, "$release: $db updated to $current");
	}

	my %after = table_contents($node, 'app', \%columns);
	for my $table (sort keys %before)
	{
		is($after{$table}, $before{$table},
			"$release: $table holds what it held before the update");
	}
	use_after_update($node, $release);

	$node->safe_psql('postgres', 'CREATE DATABASE fresh');
	$node->safe_psql('fresh', 'CREATE EXTENSION payments');
	my $updated = extension_dump($node, 'bare');
	my $fresh = extension_dump($node, 'fresh');
	ok(length($fresh) > 10000, "$release: the dump of a fresh install is not empty");
	is(diff_lines($updated, $fresh), '',
		"$release: the updated catalog is identical to a fresh install of $current");

	run_suite($node, $release);
	$node->stop;
	remove_tree($build);
	return;
}

# Every table through the released API: keys, stock, holds in every state,
# a guarded table and its history, compensations run by the worker and
# claimed by an external executor.
sub fill
{
	my ($node, $release) = @_;

	$node->safe_psql('app', q{
CREATE TABLE orders (id int PRIMARY KEY, status text NOT NULL);
CREATE TABLE refunds (item text);
CREATE FUNCTION refund(p jsonb) RETURNS void LANGUAGE sql
    AS $$ INSERT INTO public.refunds VALUES (p->>'item') $$;
CREATE FUNCTION gateway(p jsonb) RETURNS void LANGUAGE sql AS $$ SELECT $$;

SELECT payments.idempotency_begin('checkout', 'k1', '{"amount": 100}');
SELECT payments.idempotency_complete('checkout', 'k1', '{"paid": true}', 201);
SELECT payments.idempotency_begin('checkout', 'k2', '{"amount": 5}');
SELECT payments.idempotency_checkpoint('checkout', 'k2', 'charged');

SELECT payments.stock_set('sku-1', 100);
SELECT payments.stock_set('sku-hot', 1000, 8);
SELECT payments.reserve('o1', 'sku-1', 3);
SELECT payments.reserve('o2', '[{"sku": "sku-1", "qty": 2}, {"sku": "sku-hot", "qty": 7}]');
SELECT payments.reserve('o3', 'sku-hot', 1);
SELECT payments.confirm_order('o1');
SELECT payments.release_order('o3');

SELECT payments.define_state_machine('order',
    '{"new": ["paid", "cancelled"], "paid": ["refunded"]}', ARRAY['new']);
SELECT payments.guard_state('orders', 'status', 'order');
INSERT INTO orders VALUES (1, 'new'), (2, 'new');
UPDATE orders SET status = 'paid' WHERE id = 1;
UPDATE orders SET status = 'refunded' WHERE id = 1;
UPDATE orders SET status = 'cancelled' WHERE id = 2;

SELECT payments.enqueue_compensation('refund(jsonb)', '{"item": "a"}', 'refund-a');
SELECT payments.enqueue_compensation('refund(jsonb)', '{"item": "b"}');
SELECT payments.register_external_handler('gateway(jsonb)');
SELECT payments.enqueue_compensation('gateway(jsonb)', '{"item": "c"}');
SELECT payments.enqueue_compensation('gateway(jsonb)', '{"item": "d"}');
});
	$node->poll_query_until('app',
		"SELECT count(*) = 2 FROM refunds")
	  or die "the $release worker did not run the compensations";
	$node->poll_query_until('app',
		"SELECT count(*) = 2 FROM payments.compensations"
		  . " WHERE handler LIKE 'public.refund(%' AND status = 'succeeded'")
	  or die "the $release worker did not record the compensations";
	$node->safe_psql('app', q{
SELECT count(*) FROM payments.claim_compensations('gateway(jsonb)', 1, '1 hour');
});
	return;
}

# The API after the update: each capability once, on the rows of before.
sub use_after_update
{
	my ($node, $release) = @_;

	is($node->safe_psql('app',
			"SELECT outcome FROM payments.idempotency_begin('checkout', 'k1', '{\"amount\": 100}')"),
		'replayed', "$release: a key completed before the update replays");
	$node->safe_psql('app', "SELECT payments.confirm_order('o2')");
	is($node->safe_psql('app',
			"SELECT string_agg(state, ',' ORDER BY id) FROM payments.reservations"),
		'confirmed,confirmed,confirmed,released',
		"$release: a hold taken before the update is confirmed after it");
	my ($ret, $out, $err) = $node->psql('app',
		"UPDATE orders SET status = 'paid' WHERE id = 2");
	like($err, qr/PM201|invalid transition|not allowed/i,
		"$release: the guard still refuses a move the machine forbids");
	$node->safe_psql('app', q{
SELECT payments.complete_compensation(id, claim_token)
  FROM payments.compensations WHERE status = 'running'});
	is($node->safe_psql('app', q{
SELECT string_agg(status, ',' ORDER BY id) FROM payments.compensations
 WHERE handler LIKE 'public.gateway(%'}),
		'succeeded,pending',
		"$release: a claim taken before the update is completed with its token");
	return;
}

# The extension's tables and their columns, as a released version made them.
sub released_columns
{
	my ($node, $db) = @_;
	my %columns;

	for my $row (split /\n/, $node->safe_psql($db, q{
SELECT c.relname, string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum)
  FROM pg_class c
  JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = c.oid
   AND d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'payments'
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
 WHERE c.relkind = 'r'
 GROUP BY c.relname}))
	{
		my ($table, $list) = split /\|/, $row;
		$columns{$table} = $list;
	}
	return %columns;
}

# Each of those tables as text, those columns only, in a stable order.
sub table_contents
{
	my ($node, $db, $columns) = @_;
	my %contents;

	for my $table (keys %$columns)
	{
		$contents{$table} = $node->safe_psql($db,
			"SELECT $columns->{$table} FROM payments.$table ORDER BY 1, 2");
	}
	return %contents;
}

# A database's objects, the extension's one by one as pg_upgrade sees them
# (a plain pg_dump shows only CREATE EXTENSION), without the OIDs and transaction
# ids that differ between two installs.
sub extension_dump
{
	my ($node, $db) = @_;
	my $dump = '';
	my ($stdout, $stderr);

	IPC::Run::run([ "$install_path/bin/pg_dump", '--schema-only', '--binary-upgrade',
			'-h', $node->host, '-p', $node->port, $db ],
		'>', \$stdout, '2>', \$stderr)
	  or die "pg_dump failed: $stderr";
	for my $line (split /\n/, $stdout)
	{
		next if $line =~ /binary_upgrade_set_next|relfrozenxid|^\\(un)?restrict |WHERE oid = /;
		# the OIDs of the configuration tables, in the order they were marked
		$line =~ s/'\{[0-9,]+\}'/'{config tables}'/
		  if $line =~ /binary_upgrade_create_empty_extension/;
		$dump .= "$line\n";
	}
	return $dump;
}

# The regression suite on installs made by the update: an event trigger
# takes every CREATE EXTENSION payments from the released version to the
# current one, so each test works on an updated install.
sub run_suite
{
	my ($node, $release) = @_;
	my $outdir = "$PostgreSQL::Test::Utils::tmp_check/upgrade_regress_$release";

	my $control = slurp_file("$copy_extdir/payments.control");
	$control =~ s/^default_version = .*$/default_version = '$release'/m;
	open(my $fh, '>', "$copy_extdir/payments.control") or die $!;
	print $fh $control;
	close $fh;

	# The suite expects the worker off (test/regress.conf).
	$node->safe_psql('postgres',
		'ALTER SYSTEM SET payments.worker_enabled = off; SELECT pg_reload_conf()');
	$node->poll_query_until('postgres',
		"SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'payments worker'")
	  or die 'the workers did not stop';

	my $trigger = qq{
CREATE FUNCTION public.payments_update_after_create() RETURNS event_trigger
LANGUAGE plpgsql AS \$\$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_event_trigger_ddl_commands()
                WHERE object_type = 'extension' AND object_identity = 'payments') THEN
        ALTER EXTENSION payments UPDATE TO '$current';
    END IF;
END
\$\$;
CREATE EVENT TRIGGER payments_update_after_create ON ddl_command_end
    WHEN TAG IN ('CREATE EXTENSION') EXECUTE FUNCTION public.payments_update_after_create();
};
	$node->safe_psql('template1', $trigger);
	$node->safe_psql('postgres',
		'CREATE DATABASE contrib_regression');

	my @tests = split ' ', ($ENV{PAYMENTS_REGRESS} // die 'PAYMENTS_REGRESS is not set');
	my $ok = run_log([
			$ENV{PG_REGRESS}, '--use-existing', '--dbname=contrib_regression',
			"--bindir=$install_path/bin", '--inputdir=.', "--outputdir=$outdir",
			'--host=' . $node->host, '--port=' . $node->port, @tests ]);
	if (!$ok && -f "$outdir/regression.diffs")
	{
		diag(slurp_file("$outdir/regression.diffs"));
	}
	ok($ok, "$release: the regression suite passes on updated installs");

	$node->safe_psql('contrib_regression',
		'DROP EVENT TRIGGER payments_update_after_create');
	$node->safe_psql('template1',
		'DROP EVENT TRIGGER payments_update_after_create;'
		  . ' DROP FUNCTION public.payments_update_after_create()');
	return;
}

# The lines only one of two texts has, in a unified diff.
sub diff_lines
{
	my ($a, $b) = @_;
	my $dir = PostgreSQL::Test::Utils::tempdir();
	open(my $fa, '>', "$dir/updated") or die $!;
	print $fa $a;
	close $fa;
	open(my $fb, '>', "$dir/fresh") or die $!;
	print $fb $b;
	close $fb;
	my ($out) = run_command([ 'diff', '-u', "$dir/updated", "$dir/fresh" ]);
	return $out;
}

sub install_files
{
	my ($libdir, $sqldir) = @_;

	copy("$libdir/payments.so", "$copy_pkglibdir/payments.so")
	  or die "could not install payments.so: $!";
	copy('payments.control', "$copy_extdir/payments.control")
	  or die "could not install payments.control: $!"
	  if $libdir eq '.';
	copy("$libdir/payments.control", "$copy_extdir/payments.control")
	  or die "could not install payments.control: $!"
	  if $libdir ne '.';
	for my $script (glob("$sqldir/payments--*.sql $sqldir/src/sql/payments--*.sql"))
	{
		copy($script, $copy_extdir) or die "could not install $script: $!";
	}
	return;
}

sub current_version
{
	my ($version) = slurp_file('payments.control') =~ /^default_version = '(.*)'/m;
	return $version;
}

sub common_prefix
{
	my @dirs = @_;
	my $prefix = $dirs[0];
	for my $dir (@dirs)
	{
		chop $prefix while substr($dir, 0, length($prefix)) ne $prefix;
	}
	$prefix =~ s{/[^/]*$}{};
	return $prefix;
}
