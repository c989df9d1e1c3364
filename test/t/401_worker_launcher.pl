# The background worker: one per database with the extension, started and
# stopped with it (also by a prepared CREATE EXTENSION), doing the
# maintenance no client runs, woken at commit, surviving kill -9 and
# immediate shutdowns.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PaymentsNode;

my $node = payments_node('main', conf => "max_prepared_transactions = 5\n");

# The workers running, as "database=application name" in database order.
my $workers =
    "SELECT coalesce(string_agg(datname || '=' || application_name, ',' ORDER BY datname), 'none')"
  . " FROM pg_stat_activity WHERE backend_type = 'payments worker'";

sub wait_workers
{
	my ($expected, $what) = @_;
	ok($node->poll_query_until('postgres', $workers, $expected), $what)
	  or diag('workers: ' . $node->safe_psql('postgres', $workers));
}

# n completed keys whose TTL has run out (or, with $ttl, runs out then),
# written directly as test data.
sub expired_keys
{
	my ($db, $prefix, $n, $ttl) = @_;
	$ttl //= '-1 second';
	$node->safe_psql($db, qq{
		INSERT INTO payments.idempotency_keys
			(scope, key, request_hash, state, response, response_code, expires_at)
		SELECT 'w', '$prefix' || i, sha256('{}'), 'completed', '{}', 200, now() + interval '$ttl'
		  FROM generate_series(1, $n) i;
	});
}

sub key_count
{
	my ($db, $prefix) = @_;
	return $node->safe_psql($db,
		"SELECT count(*) FROM payments.idempotency_keys WHERE key LIKE '$prefix%'");
}

ok( $node->poll_query_until('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'payments launcher'", '1'),
	'the launcher runs');
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
ok( $node->poll_query_until('db1',
		"SELECT wait_event_type FROM pg_stat_activity WHERE backend_type = 'payments worker' AND datname = 'db1'",
		'Extension'),
	'a sleeping worker waits on an Extension wait event');

# --- maintenance with no client action ---

expired_keys('db1', 'a', 2500);
$node->poll_query_until('db1', "SELECT count(*) FROM payments.idempotency_keys WHERE key LIKE 'a%'", '0')
  or die 'keys not purged';
pass('expired idempotency keys are purged by the worker');
ok($node->safe_psql('db1', 'SELECT items_done >= 2500 FROM payments.worker_status()') eq 't',
	'worker_status() counts the items done');

# --- wake-up at commit ---

# With an hour's naptime (longer than any poll here waits), a worker that
# has done its first round does nothing more until something wakes it.
$node->append_conf('postgresql.conf', 'payments.worker_naptime = 1h');
$node->restart;
for my $db ('db1', 'db2')
{
	$node->poll_query_until($db,
		"SELECT state = 'idle' AND last_run IS NOT NULL FROM payments.worker_status()", 't')
	  or die "the worker of $db did not finish its first round";
}
expired_keys('db1', 'b', 10);
expired_keys('db1', 'keep', 10, '1 hour');
$node->safe_psql('db1', 'BEGIN; SELECT payments.notify_worker(); ROLLBACK;');
# The same in db2, committed: once its worker has done the work, the
# rolled-back wake-up, sent first, has had the time to wake db1's.
expired_keys('db2', 'b', 10);
$node->safe_psql('db2', 'BEGIN; SELECT payments.notify_worker(); COMMIT;');
ok($node->poll_query_until('db2', "SELECT count(*) FROM payments.idempotency_keys WHERE key LIKE 'b%'", '0'),
	'a committed wake-up makes a sleeping worker do its round');
is(key_count('db1', 'b'), '10', 'a rolled-back wake-up wakes nothing');
$node->safe_psql('db1', 'BEGIN; SELECT payments.notify_worker(); COMMIT;');
ok($node->poll_query_until('db1', "SELECT count(*) FROM payments.idempotency_keys WHERE key LIKE 'b%'", '0'),
	'a committed wake-up after a rolled-back one works');
is(key_count('db1', 'keep'), '10', 'the round purges only the keys whose TTL has run out');
$node->safe_psql('db1', "DELETE FROM payments.idempotency_keys WHERE key LIKE 'keep%'");
$node->append_conf('postgresql.conf', 'payments.worker_naptime = 100ms');
$node->reload;

# --- template databases ---

$node->safe_psql('template1', 'CREATE EXTENSION payments');
$node->safe_psql('postgres', 'CREATE DATABASE from_template');
# The scan that starts this database's worker has passed template1 by.
wait_workers('db1=payments worker: db1,db2=payments worker: db2,'
	  . 'from_template=payments worker: from_template',
	'a database created from a template with the extension gets a worker, the template none');
is($node->psql('postgres', 'CREATE DATABASE from_template_again'),
	0, 'so CREATE DATABASE from the template still works');
wait_workers('db1=payments worker: db1,db2=payments worker: db2,'
	  . 'from_template=payments worker: from_template,'
	  . 'from_template_again=payments worker: from_template_again',
	'and the second database gets its worker too');
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
ok( $node->poll_query_until('db1',
		"SELECT pid IS NOT NULL AND pid <> $pid FROM payments.worker_status()", 't'),
	'after kill -9 the worker is started again');
expired_keys('db1', 'd', 100);
ok($node->poll_query_until('db1', "SELECT count(*) FROM payments.idempotency_keys WHERE key LIKE 'd%'", '0'),
	'and its database\'s work resumes');

# --- immediate shutdown in the middle of a batch ---

# 200 batches of work, among keys that have not expired; stop the server
# while they run.  After the restart a new worker finishes the work and
# leaves the live keys alone.
expired_keys('db1', 'live', 1000, '1 hour');
expired_keys('db1', 'e', 200000);
$node->poll_query_until('db1',
	"SELECT count(*) < 200000 FROM payments.idempotency_keys WHERE key LIKE 'e%'", 't')
  or die 'purge did not start';
$node->stop('immediate');
my $log_from = -s $node->logfile;
$node->start;
ok($node->poll_query_until('db1', "SELECT count(*) FROM payments.idempotency_keys WHERE key LIKE 'e%'", '0'),
	'after an immediate shutdown mid-purge, the worker finishes the work');
is(key_count('db1', 'live'), '1000', 'and purges no key whose TTL has not run out');

# --- a CREATE EXTENSION that is prepared, as Citus does on its workers ---

# The launcher looked at the postgres database after the restart and left
# it alone; COMMIT PREPARED runs in another session than the CREATE.
my $pg_oid = $node->safe_psql('postgres',
	"SELECT oid FROM pg_database WHERE datname = 'postgres'");
$node->wait_for_log(
	qr/payments worker for database $pg_oid exiting because the extension is not installed/,
	$log_from);
$node->safe_psql('postgres',
	"BEGIN; CREATE EXTENSION payments; PREPARE TRANSACTION 'create_payments'");
$node->safe_psql('postgres', "COMMIT PREPARED 'create_payments'");
expired_keys('postgres', 'p', 10);
ok($node->poll_query_until('postgres', "SELECT count(*) FROM payments.idempotency_keys", '0'),
	'a CREATE EXTENSION committed by COMMIT PREPARED gets its database a worker');

$node->stop;
done_testing();
