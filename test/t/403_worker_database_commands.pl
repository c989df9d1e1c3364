# DROP DATABASE, ALTER DATABASE ... RENAME / SET TABLESPACE and CREATE
# DATABASE ... TEMPLATE need their database free of sessions, so the
# utility hook stops its worker first, but only for a command PostgreSQL
# lets go ahead.  Played from the attacker's side: a login role with
# nothing, a role with CREATEDB that owns nothing, and an owner whose
# command PostgreSQL refuses all leave the worker running (the same PID);
# the owner's own commands still work while the worker runs.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PaymentsNode;

my $node = payments_node('main');
my $tsdir = $node->basedir . '/ts';
mkdir $tsdir or die "mkdir $tsdir: $!";

$node->safe_psql('postgres', qq{
	CREATE ROLE nobody LOGIN;
	CREATE ROLE creator LOGIN CREATEDB;
	CREATE ROLE shopowner LOGIN CREATEDB;
	CREATE TABLESPACE ts LOCATION '$tsdir';
	GRANT CREATE ON TABLESPACE ts TO creator, shopowner;
	GRANT CREATE ON TABLESPACE pg_default TO shopowner;
	CREATE DATABASE shop;
	CREATE DATABASE owned OWNER shopowner;
});
$node->safe_psql('shop',  'CREATE EXTENSION payments');
$node->safe_psql('owned', 'CREATE EXTENSION payments');

my %pid = (shop => wait_for_worker($node, 'shop'), owned => wait_for_worker($node, 'owned'));

# Run $sql as $role (in the postgres database unless told), expect it to fail
# with $error, and check that the worker of $db is the one it was.
sub refused
{
	my ($role, $sql, $error, $db, %opts) = @_;
	my ($ret, $stdout, $stderr) = $node->psql($opts{in} // 'postgres', $sql,
		extra_params => [ '-U', $role ]);
	my $what = "$role: " . ($sql =~ s/\n/ /gr);
	like($stderr, $error, "$what: refused");
	is(worker_pid($node, $db), $pid{$db}, "$what: the worker of $db still runs");
}

# --- a login role with nothing ---

refused('nobody', 'DROP DATABASE shop', qr/must be owner of database shop/, 'shop');
refused('nobody', 'DROP DATABASE shop WITH (FORCE)', qr/must be owner of database shop/, 'shop');
refused('nobody', 'ALTER DATABASE shop RENAME TO shop2', qr/must be owner of database shop/, 'shop');
refused('nobody', "BEGIN;\nALTER DATABASE shop RENAME TO shop2;\n",
	qr/must be owner of database shop/, 'shop');
refused('nobody', 'ALTER DATABASE shop SET TABLESPACE ts', qr/must be owner of database shop/, 'shop');
refused('nobody', 'CREATE DATABASE copy TEMPLATE shop',
	qr/permission denied to create database/, 'shop');

# --- CREATEDB and CREATE on the tablespace, but not the owner ---

refused('creator', 'CREATE DATABASE copy TEMPLATE shop',
	qr/permission denied to copy database "shop"/, 'shop');
refused('creator', 'CREATE DATABASE copy TEMPLATE shop OWNER shopowner',
	qr/must be member of role "shopowner"/, 'shop');
refused('creator', 'ALTER DATABASE shop RENAME TO shop2', qr/must be owner of database shop/, 'shop');
refused('creator', 'ALTER DATABASE shop SET TABLESPACE ts', qr/must be owner of database shop/, 'shop');
refused('creator', 'DROP DATABASE shop', qr/must be owner of database shop/, 'shop');

# --- the owner, in ways PostgreSQL refuses ---

refused('shopowner', "BEGIN;\nDROP DATABASE owned;\n",
	qr/DROP DATABASE cannot run inside a transaction block/, 'owned');
refused('shopowner', "BEGIN;\nALTER DATABASE owned SET TABLESPACE ts;\n",
	qr/ALTER DATABASE SET TABLESPACE cannot run inside a transaction block/, 'owned');
refused('shopowner', "BEGIN;\nCREATE DATABASE owned_copy TEMPLATE owned;\n",
	qr/CREATE DATABASE cannot run inside a transaction block/, 'owned');
refused('shopowner', q{DO $$ BEGIN EXECUTE 'DROP DATABASE owned'; END $$},
	qr/DROP DATABASE cannot be executed from a function/, 'owned');
refused('shopowner', 'DROP DATABASE owned',
	qr/cannot drop the currently open database/, 'owned', in => 'owned');
refused('shopowner', 'ALTER DATABASE owned RENAME TO shop', qr/database "shop" already exists/, 'owned');
refused('shopowner', 'ALTER DATABASE owned SET TABLESPACE pg_global',
	qr/permission denied for tablespace pg_global/, 'owned');
refused('shopowner', 'ALTER DATABASE owned SET TABLESPACE nowhere',
	qr/tablespace "nowhere" does not exist/, 'owned');
refused('shopowner', 'CREATE DATABASE shop TEMPLATE owned', qr/database "shop" already exists/, 'owned');
$node->safe_psql('postgres', 'ALTER ROLE shopowner NOCREATEDB');
refused('shopowner', 'ALTER DATABASE owned RENAME TO owned2',
	qr/permission denied to rename database/, 'owned');
$node->safe_psql('postgres', 'ALTER ROLE shopowner CREATEDB');

# Moving a database to the tablespace it is in does nothing, and needs no
# database free of sessions.
$node->safe_psql('postgres', 'ALTER DATABASE owned SET TABLESPACE pg_default',
	extra_params => [ '-U', 'shopowner' ]);
is(worker_pid($node, 'owned'), $pid{owned},
	'moving a database to its own tablespace leaves its worker running');

# --- the owner's commands go ahead while the worker runs ---

$node->safe_psql('postgres', 'CREATE DATABASE owned_copy TEMPLATE owned',
	extra_params => [ '-U', 'shopowner' ]);
pass('the owner copies the database while its worker runs');
$pid{owned} = wait_for_worker($node, 'owned');
pass('and the worker comes back after the copy');
wait_for_worker($node, 'owned_copy');
pass('the copy, which has the extension, gets a worker of its own');

# A rename rolled back: the worker comes back at the rollback.
$node->safe_psql('postgres', "BEGIN;\nALTER DATABASE owned RENAME TO owned2;\nROLLBACK;",
	extra_params => [ '-U', 'shopowner' ]);
$pid{owned} = wait_for_worker($node, 'owned');
pass('a rename the owner rolls back brings the worker back');

# A command that passes the permission checks but fails later brings the
# worker back too: here another session holds the database.
my $session = $node->background_psql('owned');
$session->query_safe('SELECT 1');
my ($ret, $stdout, $stderr) = $node->psql('postgres', 'DROP DATABASE owned',
	extra_params => [ '-U', 'shopowner' ]);
like($stderr, qr/database "owned" is being accessed by other users/,
	'DROP DATABASE fails while another session uses the database');
$session->quit;
$pid{owned} = wait_for_worker($node, 'owned');
pass('and the worker comes back');

$node->safe_psql('postgres', 'ALTER DATABASE owned SET TABLESPACE ts',
	extra_params => [ '-U', 'shopowner' ]);
is( $node->safe_psql('postgres',
		"SELECT spcname FROM pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace WHERE datname = 'owned'"),
	'ts', 'the owner moves the database to another tablespace while its worker runs');
$pid{owned} = wait_for_worker($node, 'owned');

$node->safe_psql('postgres', 'DROP DATABASE owned', extra_params => [ '-U', 'shopowner' ]);
is($node->safe_psql('postgres', "SELECT count(*) FROM pg_database WHERE datname = 'owned'"),
	'0', 'the owner drops the database while its worker runs');
is(worker_pid($node, 'shop'), $pid{shop}, 'and the worker of the other database is untouched');

$node->stop;
done_testing();
