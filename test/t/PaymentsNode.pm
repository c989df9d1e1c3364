# Node set-up shared by the TAP tests: a cluster that preloads the library,
# with launcher and worker timings short enough for a test, and the few
# look-ups of the workers most tests make.  The Makefile's test-tap rule
# puts test/t on prove's include path.
package PaymentsNode;

use strict;
use warnings;

use Exporter 'import';
use PostgreSQL::Test::Cluster;

our @EXPORT = qw(payments_node worker_conf worker_pid);

# The settings every worker test starts from, for nodes made another way
# (a standby gets them from its primary's backup).
sub worker_conf
{
	return qq{
shared_preload_libraries = 'payments'
restart_after_crash = on
payments.launcher_naptime = 1s
payments.worker_naptime = 100ms
};
}

# payments_node(name, [allows_streaming => 1], [conf => "more settings"]):
# a started node with worker_conf() and the extra settings.
sub payments_node
{
	my ($name, %opts) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);

	$node->init($opts{allows_streaming} ? (allows_streaming => 1) : ());
	$node->append_conf('postgresql.conf', worker_conf() . ($opts{conf} // ''));
	$node->start;
	return $node;
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

1;
