# The background worker: one per database with the extension, started and
# stopped with it, doing the maintenance no client runs, woken at commit,
# surviving kill -9 and immediate shutdowns.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $node = PostgreSQL::Test::Cluster->new('main');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'payments'
restart_after_crash = on
payments.launcher_naptime = 1s
payments.worker_naptime = 100ms
});
$node->start;

sub workers
{
	return $node->safe_psql('postgres',
		"SELECT coalesce(string_agg(datname || '=' || application_name, ',' ORDER BY datname), 'none')"
		  . " FROM pg_stat_activity WHERE backend_type = 'payments worker'");
}

sub wait_workers
{
	my ($expected, $what) = @_;
	$node->poll_query_until('postgres',
		"SELECT coalesce(string_agg(datname || '=' || application_name, ',' ORDER BY datname), 'none')"
		  . " FROM pg_stat_activity WHERE backend_type = 'payments worker'",
		$expected)
	  or die "timed out waiting for workers: $expected";
	is(workers(), $expected, $what);
}

# n completed keys whose TTL has run out, written directly as test data.
sub expired_keys
{
	my ($db, $prefix, $n) = @_;
	$node->safe_psql($db, qq{
		INSERT INTO payments.idempotency_keys
			(scope, key, request_hash, state, response, response_code, expires_at)
		SELECT 'w', '$prefix' || i, sha256('{}'), 'completed', '{}', 200, now() - interval '1 second'
		  FROM generate_series(1, $n) i;
	});
}

sub key_count
{
	my ($db, $prefix) = @_;
	return $node->safe_psql($db,
		"SELECT count(*) FROM payments.idempotency_keys WHERE key LIKE '$prefix%'");
}

$node->poll_query_until('postgres',
	"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'payments launcher'", '1')
  or die 'no launcher';
pass('the launcher runs');
wait_workers('none', 'no worker where the extension is not installed');

# --- a worker per database with the extension ---

$node->safe_psql('postgres', 'CREATE DATABASE db1');
$node->safe_psql('postgres', 'CREATE DATABASE db2');
$node->safe_psql('db1', 'CREATE EXTENSION payments');
wait_workers('db1=payments worker: db1', 'CREATE EXTENSION starts a worker for its database');
$node->safe_psql('db2', 'CREATE EXTENSION payments');
wait_workers('db1=payments worker: db1,db2=payments worker: db2',
	'two databases get two workers');

is( $node->safe_psql('db1',
		"SELECT s.pid = a.pid AND s.state IN ('idle', 'running') FROM payments.worker_status() s"
		  . " JOIN pg_stat_activity a ON a.backend_type = 'payments worker' AND a.datname = 'db1'"),
	't', 'worker_status() names the worker of this database');
is( $node->safe_psql('db1',
		"SELECT wait_event_type FROM pg_stat_activity WHERE backend_type = 'payments worker' AND datname = 'db1' AND state IS DISTINCT FROM 'active'"),
	'Extension', 'a sleeping worker waits on an Extension wait event');

# --- maintenance with no client action ---

expired_keys('db1', 'a', 2500);
$node->poll_query_until('db1', "SELECT count(*) FROM payments.idempotency_keys WHERE key LIKE 'a%'", '0')
  or die 'keys not purged';
pass('expired idempotency keys are purged by the worker');
ok($node->safe_psql('db1', 'SELECT items_done >= 2500 FROM payments.worker_status()') eq 't',
	'worker_status() counts the items done');

# --- wake-up at commit ---

$node->append_conf('postgresql.conf', 'payments.worker_naptime = 60s');
$node->reload;
sleep 1;    # let the worker start its first 60 s sleep
expired_keys('db1', 'b', 10);
sleep 2;
is(key_count('db1', 'b'), '10', 'with a 60 s naptime, nothing is purged without a wake-up');
my $t0 = time();
$node->safe_psql('db1', 'BEGIN; SELECT payments.notify_worker(); COMMIT;');
$node->poll_query_until('db1', "SELECT count(*) FROM payments.idempotency_keys WHERE key LIKE 'b%'", '0')
  or die 'keys not purged after wake-up';
my $elapsed = time() - $t0;
ok($elapsed < 30, sprintf('a committed wake-up starts the work long before the 60 s naptime (%.2f s)', $elapsed));
$node->safe_psql('db1', 'BEGIN; SELECT payments.notify_worker(); ROLLBACK;');
expired_keys('db1', 'c', 10);
$node->safe_psql('db1', 'BEGIN; SELECT payments.notify_worker(); ROLLBACK;');
sleep 2;
is(key_count('db1', 'c'), '10', 'a rolled-back wake-up wakes nothing');
$node->append_conf('postgresql.conf', 'payments.worker_naptime = 100ms');
$node->reload;
$node->safe_psql('db1', 'SELECT payments.notify_worker()');
$node->poll_query_until('db1', "SELECT count(*) FROM payments.idempotency_keys WHERE key LIKE 'c%'", '0')
  or die 'keys not purged';

# --- template databases ---

$node->safe_psql('template1', 'CREATE EXTENSION payments');
$node->safe_psql('postgres', 'CREATE DATABASE from_template');
$node->safe_psql('postgres', 'SELECT pg_sleep(2)');    # two launcher scans
$node->safe_psql('postgres', 'CREATE DATABASE from_template_again');
pass('with the extension in template1, CREATE DATABASE still works');
wait_workers('db1=payments worker: db1,db2=payments worker: db2,'
	  . 'from_template=payments worker: from_template,'
	  . 'from_template_again=payments worker: from_template_again',
	'databases created from it get workers, template1 itself none');
$node->safe_psql('postgres', 'DROP DATABASE from_template');
$node->safe_psql('postgres', 'DROP DATABASE from_template_again');
$node->safe_psql('template1', 'DROP EXTENSION payments');
wait_workers('db1=payments worker: db1,db2=payments worker: db2',
	'dropping them stops their workers');

# --- DROP EXTENSION and DROP DATABASE ---

$node->safe_psql('db2', 'DROP EXTENSION payments');
wait_workers('db1=payments worker: db1', 'DROP EXTENSION stops the worker of its database');
$node->safe_psql('db2', 'CREATE EXTENSION payments');
wait_workers('db1=payments worker: db1,db2=payments worker: db2',
	'CREATE EXTENSION again starts it again');
$node->safe_psql('postgres', 'DROP DATABASE db2');
wait_workers('db1=payments worker: db1', 'DROP DATABASE succeeds and its worker is gone');

# --- payments.worker_enabled ---

$node->append_conf('postgresql.conf', 'payments.worker_enabled = off');
$node->reload;
wait_workers('none', 'worker_enabled = off stops every worker');
$node->append_conf('postgresql.conf', 'payments.worker_enabled = on');
$node->reload;
wait_workers('db1=payments worker: db1', 'worker_enabled = on starts them again');

# --- kill -9 of the worker ---

my $pid = $node->safe_psql('db1', 'SELECT pid FROM payments.worker_status()');
kill 'KILL', $pid or die "could not kill worker $pid";
$node->poll_query_until('db1',
	"SELECT pid IS NOT NULL AND pid <> $pid FROM payments.worker_status()", 't')
  or die 'worker did not come back';
pass('after kill -9 the worker is started again');
expired_keys('db1', 'd', 100);
$node->poll_query_until('db1', "SELECT count(*) FROM payments.idempotency_keys WHERE key LIKE 'd%'", '0')
  or die 'keys not purged after restart';
pass('and its database\'s work resumes');

# --- immediate shutdown in the middle of a batch ---

# 200 batches of work; stop the server while they run.  Every batch the
# worker committed stays done, and the rest is done after the restart.
expired_keys('db1', 'e', 200000);
$node->poll_query_until('db1',
	"SELECT count(*) < 200000 FROM payments.idempotency_keys WHERE key LIKE 'e%'", 't')
  or die 'purge did not start';
my $before_stop = key_count('db1', 'e');
$node->stop('immediate');
$node->start;
my $after_restart = key_count('db1', 'e');
ok($after_restart <= $before_stop,
	"immediate shutdown mid-purge loses no committed batch ($before_stop left before, $after_restart after)");
$node->poll_query_until('db1', "SELECT count(*) FROM payments.idempotency_keys WHERE key LIKE 'e%'", '0')
  or die 'keys not purged after restart';
pass('after the restart the worker finishes the work');
is($node->safe_psql('db1', "SELECT count(*) FROM payments.idempotency_keys"), '0',
	'and nothing else was touched');

$node->stop;
done_testing();
