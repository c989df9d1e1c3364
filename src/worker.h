/*-------------------------------------------------------------------------
 *
 * worker.h
 *	  Shared state of the launcher and the per-database workers.
 *
 * Lifecycle (see README.md, "Background worker"):
 *
 * - The launcher is a static background worker registered by _PG_init when
 *   the library is preloaded.  It starts once recovery has finished (so
 *   never on a standby, and right after promotion), connects to no
 *   database, and is restarted by the postmaster if it dies.
 *
 * - Every launcher_naptime, and at once when a transaction that ran CREATE
 *   EXTENSION payments commits, it lists the databases that accept
 *   connections and are not templates (a connection to a template makes
 *   CREATE DATABASE from it fail) and starts a dynamic worker for each one
 *   that has none.
 *   A worker that finds no extension in its database records that and
 *   exits; the launcher does not probe that database again until CREATE
 *   EXTENSION there says otherwise (or the launcher restarts).
 *
 * - A worker exits when the extension is dropped from its database, when
 *   payments.worker_enabled is turned off, or when a DROP DATABASE, ALTER
 *   DATABASE RENAME / SET TABLESPACE or CREATE DATABASE ... TEMPLATE needs
 *   its database free of connections.  A utility hook stops it first, but
 *   only once it has checked, as PostgreSQL is about to, that the command
 *   is allowed to its user and will go ahead; it keeps the launcher away
 *   until the command's transaction ends.  Workers are never restarted by
 *   the postmaster; the launcher starts them again.
 *
 *-------------------------------------------------------------------------
 */
#ifndef PAYMENTS_WORKER_H
#define PAYMENTS_WORKER_H

#include "datatype/timestamp.h"
#include "storage/latch.h"
#include "storage/lwlock.h"

#define PAYMENTS_WORKER_ERROR_LEN	256
#define PAYMENTS_MAX_EXCLUDED		64

typedef enum PaymentsWorkerState
{
	PW_FREE = 0,				/* slot unused */
	PW_STARTING,				/* registered by the launcher, not yet up */
	PW_IDLE,					/* sleeping between rounds */
	PW_RUNNING					/* doing a unit of work */
} PaymentsWorkerState;

typedef struct PaymentsWorkerSlot
{
	Oid			dboid;
	pid_t		pid;
	Latch	   *latch;			/* the worker's latch, for wake-ups */
	PaymentsWorkerState state;
	TimestampTz started_at;
	TimestampTz last_run;		/* end of the last round */
	int64		items_done;
	int64		items_failed;
	char		last_error[PAYMENTS_WORKER_ERROR_LEN];
} PaymentsWorkerSlot;

/*
 * A database the launcher leaves alone: it has no extension (until = 0,
 * for as long as nothing says otherwise) or a utility command needs it free
 * of connections (until a deadline).
 */
typedef struct PaymentsExcludedDb
{
	Oid			dboid;
	TimestampTz until;
} PaymentsExcludedDb;

typedef struct PaymentsShared
{
	LWLock	   *lock;			/* protects everything below */
	pid_t		launcher_pid;
	Latch	   *launcher_latch;
	bool		rescan_requested;
	PaymentsExcludedDb excluded[PAYMENTS_MAX_EXCLUDED];
	int			nslots;
	PaymentsWorkerSlot slots[FLEXIBLE_ARRAY_MEMBER];
} PaymentsShared;

/* What the launcher passes a worker in bgw_extra */
typedef struct PaymentsWorkerArgs
{
	Oid			dboid;
	Oid			roleoid;		/* InvalidOid: the bootstrap superuser */
} PaymentsWorkerArgs;

/* NULL unless the library was preloaded */
extern PaymentsShared *payments_shared;

/* Settings, defined by worker_init (worker_shmem.c) */
extern bool payments_worker_enabled;
extern int	payments_launcher_naptime;
extern int	payments_worker_naptime;
extern int	payments_max_workers;
extern char *payments_worker_role;

/* worker_shmem.c */
extern void worker_init(void);
extern PaymentsWorkerSlot *payments_find_slot(Oid dboid);
extern void payments_exclude_database(Oid dboid, TimestampTz until);
extern bool payments_database_excluded(Oid dboid, TimestampTz now);
extern Latch *payments_request_rescan(void);
extern void payments_wake_worker_at_commit(void);
extern void payments_register_database_at_commit(void);

/* launcher.c, worker.c: entry points named in bgw_function_name */
extern PGDLLEXPORT void payments_launcher_main(Datum main_arg);
extern PGDLLEXPORT void payments_worker_main(Datum main_arg);
extern void payments_register_launcher(void);

#endif							/* PAYMENTS_WORKER_H */
