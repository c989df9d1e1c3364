/*-------------------------------------------------------------------------
 *
 * worker.h
 *	  Shared state of the launcher and the per-database workers.
 *
 * Lifecycle (see README.md, "Background worker", and doc/worker.md):
 *
 * - The launcher is a static background worker registered by _PG_init when
 *   the library is preloaded.  It starts once recovery has finished (so
 *   never on a standby, and right after promotion), connects to no
 *   database, and is restarted by the postmaster if it dies.
 *
 * - It keeps one PaymentsDatabase entry per database that accepts
 *   connections and is not a template (a connection to a template makes
 *   CREATE DATABASE from it fail), listed every launcher_naptime and at
 *   once when CREATE EXTENSION payments commits.  A database is due when a
 *   committed transaction asked for its worker, when the time its last
 *   round computed for its next work has come, or worker_naptime after its
 *   last round.  A database never looked at is due at once: the worker it
 *   gets finds out whether it has the extension, and if not records that
 *   and exits; the launcher leaves that database alone until CREATE
 *   EXTENSION there says otherwise (or the launcher restarts).
 *
 * - At most payments.max_workers workers run, each connected to one
 *   database, as autovacuum's workers are.  The launcher gives a free slot
 *   to the due database that has waited longest.  A worker stays with its
 *   database while no other database waits for a slot, so that commit
 *   wake-ups reach it within milliseconds; when one waits, a worker whose
 *   database has nothing due leaves at once, and one whose database still
 *   has work leaves after WORKER_QUANTUM_MS of rounds, so no database can
 *   keep the others waiting.
 *
 * - A worker also exits when the extension is dropped from its database,
 *   when payments.worker_enabled is turned off, or when a DROP DATABASE,
 *   ALTER DATABASE RENAME / SET TABLESPACE or CREATE DATABASE ... TEMPLATE
 *   needs its database free of connections.  A utility hook stops it first,
 *   but only once it has checked, as PostgreSQL is about to, that the
 *   command is allowed to its user and will go ahead; it keeps the launcher
 *   away until the command's transaction ends.  Workers are never restarted
 *   by the postmaster; the launcher starts them again.
 *
 *-------------------------------------------------------------------------
 */
#ifndef PAYMENTS_WORKER_H
#define PAYMENTS_WORKER_H

#include "datatype/timestamp.h"
#include "port/atomics.h"
#include "storage/latch.h"
#include "storage/lwlock.h"

#define PAYMENTS_WORKER_ERROR_LEN	256

/*
 * How long a worker whose database still has work keeps its slot while
 * another database waits for one.
 */
#define WORKER_QUANTUM_MS			1000

typedef enum PaymentsWorkerState
{
	PW_FREE = 0,				/* slot unused */
	PW_STARTING,				/* registered by the launcher, not yet up */
	PW_IDLE,					/* sleeping between rounds */
	PW_RUNNING					/* doing a unit of work */
} PaymentsWorkerState;

/* A worker process: at most payments.max_workers of them. */
typedef struct PaymentsWorkerSlot
{
	Oid			dboid;
	pid_t		pid;
	Latch	   *latch;			/* the worker's latch, for wake-ups */
	PaymentsWorkerState state;
	TimestampTz started_at;
	bool		leave_requested;	/* the launcher needs the slot back */
	uint64		generation;		/* bumped by the launcher at each reservation */
} PaymentsWorkerSlot;

/*
 * What the launcher and the workers know of one database.  Times are 0
 * when unknown.  due_at is atomic because a committing backend lowers it
 * without the lock (payments_worker_due_at_commit); everything else is
 * protected by the lock.  outbox_min_id is atomic for the same
 * reason.
 */
typedef struct PaymentsDatabase
{
	Oid			dboid;			/* InvalidOid: entry unused */
	bool		no_extension;	/* a worker found none; left alone */
	TimestampTz paused_until;	/* a utility command needs it free */
	bool		wake_requested; /* a committed transaction asked */
	TimestampTz wake_at;		/* when the oldest unanswered request came */
	pg_atomic_uint64 due_at;	/* when its next known work is due */
	pg_atomic_uint64 outbox_min_id; /* the smallest outbox id sent by the
									 * commits since the worker last took
									 * it, or PG_UINT64_MAX */
	TimestampTz last_run;		/* end of its last round */
	TimestampTz last_start;		/* when the launcher last started a worker */
	bool		start_failed;	/* and that worker never began */
	int			start_failures; /* in a row; the retry backs off */
	int64		last_wait_us;	/* how long its last due work waited */
	int64		max_wait_us;
	int64		rounds;
	int64		items_done;
	int64		items_failed;
	char		last_error[PAYMENTS_WORKER_ERROR_LEN];
	char		unserved[PAYMENTS_WORKER_ERROR_LEN];	/* why no worker starts */
} PaymentsDatabase;

typedef struct PaymentsShared
{
	LWLock	   *lock;			/* protects everything below */
	pid_t		launcher_pid;
	Latch	   *launcher_latch;
	bool		rescan_requested;
	int			nwaiting;		/* due databases without a worker */
	int			ndatabases;
	PaymentsDatabase *databases;	/* ndatabases entries, after the slots */
	int			nslots;
	PaymentsWorkerSlot slots[FLEXIBLE_ARRAY_MEMBER];
} PaymentsShared;

/* What the launcher passes a worker in bgw_extra */
typedef struct PaymentsWorkerArgs
{
	Oid			dboid;
	Oid			roleoid;		/* InvalidOid: the bootstrap superuser */
	uint64		generation;		/* the slot reservation this worker is for */
} PaymentsWorkerArgs;

/* NULL unless the library was preloaded */
extern PaymentsShared *payments_shared;

/* Settings, defined by worker_init (worker_shmem.c) */
extern bool payments_worker_enabled;
extern int	payments_launcher_naptime;
extern int	payments_worker_naptime;
extern int	payments_max_workers;
extern int	payments_max_databases;
extern char *payments_worker_role;

/* worker_shmem.c */
extern void worker_init(void);
extern PaymentsWorkerSlot *payments_find_slot(Oid dboid);
extern PaymentsDatabase *payments_find_database(Oid dboid);
extern PaymentsDatabase *payments_add_database(Oid dboid);
extern bool payments_database_excluded(PaymentsDatabase *db, TimestampTz now);
extern TimestampTz payments_database_due(PaymentsDatabase *db);
extern Latch *payments_request_rescan(void);
extern void payments_wake_worker_at_commit(void);
extern void payments_worker_due_at_commit(TimestampTz due);
extern void payments_register_database_at_commit(void);
extern void payments_outbox_sent_at_commit(int64 id);
extern uint64 payments_outbox_take_min_sent(void);

/* worker.c: true in a worker whose quantum is over while a database waits */
extern bool payments_worker_should_yield(void);

/* launcher.c, worker.c: entry points named in bgw_function_name */
extern PGDLLEXPORT void payments_launcher_main(Datum main_arg);
extern PGDLLEXPORT void payments_worker_main(Datum main_arg);
extern void payments_register_launcher(void);

#endif							/* PAYMENTS_WORKER_H */
