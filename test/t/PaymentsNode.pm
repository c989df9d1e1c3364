# Node set-up shared by the TAP tests: a cluster that preloads the library,
# with launcher and worker timings short enough for a test, a streaming
# standby of it, and the few look-ups of the workers most tests make.  The
# Makefile's test-tap rule puts test/t on prove's include path.
#
# The files are numbered by capability: 0xx idempotency, 1xx reservations,
# 2xx state guard, 3xx compensations, 4xx the worker, 5xx callbacks, 6xx
# reconciliation, 9xx the extension as a whole.
package PaymentsNode;

use strict;
use warnings;

use Exporter 'import';
use PostgreSQL::Test::Cluster;

our @EXPORT =
  qw(payments_node payments_standby worker_conf worker_pid wait_for_worker stubborn_handler
  citus_cluster);

# The settings every worker test starts from, for nodes made another way
# (a standby gets them from its primary's backup).
sub worker_conf
{
	return qq{
shared_preload_libraries = 'payments'
restart_after_crash = on
payments.launcher_naptime = 1s
payments.worker_naptime = 100ms
payments.max_workers = 8
};
}

# payments_node(name, [allows_streaming => 1], [conf => "more settings"],
#               [worker_timings => 0], [preload => 0]):
# a started node with worker_conf() and the extra settings.  A test of
# something other than the worker passes worker_timings => 0 to leave the
# library preloaded with the worker at its default timings; preload => 0
# makes a node that does not preload the library at all.
sub payments_node
{
	my ($name, %opts) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	my $conf = '';

	if ($opts{preload} // 1)
	{
		$conf = ($opts{worker_timings} // 1)
		  ? worker_conf()
		  : "shared_preload_libraries = 'payments'\n";
	}
	$node->init($opts{allows_streaming} ? (allows_streaming => 1) : ());
	$node->append_conf('postgresql.conf', $conf . ($opts{conf} // ''));
	$node->start;
	return $node;
}

# A Citus cluster on this machine: a coordinator and two workers, Citus
# and the extension preloaded with conf's settings (after the worker's),
# the workers added to the coordinator's metadata.  Each node reaches
# itself through its socket directory (a shard move does).  Returns the
# coordinator and the workers.
sub citus_cluster
{
	my (%opts) = @_;
	my $conf = qq{
shared_preload_libraries = 'citus,payments'
max_worker_processes = 32
} . ($opts{conf} // '');
	my $coord = payments_node('coordinator', conf => $conf);
	my @workers = map { payments_node("worker$_", conf => $conf) } 1 .. 2;

	for my $node ($coord, @workers)
	{
		$node->append_conf('postgresql.conf',
			"citus.local_hostname = '" . $node->host . "'");
		$node->reload;
		$node->safe_psql('postgres', 'CREATE EXTENSION citus');
	}
	$coord->safe_psql('postgres',
		"SELECT citus_set_coordinator_host('" . $coord->host . "', " . $coord->port . ')');
	$coord->safe_psql('postgres',
		"SELECT citus_add_node('" . $_->host . "', " . $_->port . ')')
	  for @workers;
	return ($coord, @workers);
}

# A started streaming standby of the primary, made from a fresh backup, with
# the primary's settings.
sub payments_standby
{
	my ($primary, $name) = @_;
	my $standby = PostgreSQL::Test::Cluster->new($name);

	$primary->backup("${name}_backup");
	$standby->init_from_backup($primary, "${name}_backup", has_streaming => 1);
	$standby->start;
	return $standby;
}

# The PID of the worker connected to the database, '' if there is none.
# Asked from the postgres database, so that asking adds no session to it.
sub worker_pid
{
	my ($node, $db) = @_;
	return $node->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'payments worker'"
		  . " AND datname = '$db'");
}

# Wait until a worker is connected to the database, and return its PID.
sub wait_for_worker
{
	my ($node, $db) = @_;
	$node->poll_query_until('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'payments worker'"
		  . " AND datname = '$db'", '1')
	  or die "no worker in database $db";
	return worker_pid($node, $db);
}

# The SQL that creates a compensation handler named $name which catches
# every cancel and goes on: only ending its session stops it.
sub stubborn_handler
{
	my ($name) = @_;
	return qq{
	CREATE FUNCTION $name(p jsonb) RETURNS void LANGUAGE plpgsql AS \$\$
	BEGIN
		LOOP
			BEGIN
				PERFORM pg_sleep(10);
			EXCEPTION WHEN query_canceled THEN
				NULL;
			END;
		END LOOP;
	END \$\$;
};
}

1;
