/*-------------------------------------------------------------------------
 *
 * state_guard.h
 *	  The state guard: a status column that only moves along the edges of
 *	  a declared state machine, with every accepted move recorded.
 *
 * Three files share this header, one per responsibility:
 *
 *	  state_machine.c	  parses and checks a machine's definition, and
 *						  caches machines and guard triggers per backend
 *	  state_guard.c		  the trigger: checks each move and records it
 *	  state_guard_ddl.c	  define_state_machine, guard_state, unguard_state
 *
 *-------------------------------------------------------------------------
 */
#ifndef STATE_GUARD_H
#define STATE_GUARD_H

#include "commands/trigger.h"
#include "utils/array.h"
#include "utils/jsonb.h"
#include "utils/relcache.h"

#define MACHINE_NAME_MAX_BYTES	(NAMEDATALEN - 1)

/*
 * A parsed machine.  States are sorted (strcmp) so a state's index is found
 * by binary search; each state's next states keep the order they were
 * given in, which is the order messages list them in.
 */
typedef struct Machine
{
	int			nstates;
	char	  **states;
	bool	   *initial;
	int		   *nnext;
	int		  **next;
} Machine;

/* What one guard trigger needs per row, built on its first use. */
typedef struct GuardEntry
{
	Oid			tgoid;			/* hash key */
	bool		valid;			/* cleared by a relcache invalidation */
	Oid			relid;
	AttrNumber	attnum;
	bool		bpchar;			/* char(n): ignore the padding */
	FmgrInfo	out;			/* the state column's output function */
	char		machine_name[NAMEDATALEN];
	Machine    *machine;		/* resolved on first use */
	int			npk;
	AttrNumber	pk_attnums[INDEX_MAX_KEYS];
	FmgrInfo	pk_out[INDEX_MAX_KEYS];
	char	   *pk_names;		/* "id" or "a, b", for messages */
	Oid			root_tgoid;		/* the trigger guard_state created: this one,
								 * or the one on the partitioned table this
								 * one is a clone of */
	Oid			root_relid;		/* its table, named in the history */
} GuardEntry;

/* state_machine.c: definitions */
extern Machine *state_machine_parse(const char *name, Jsonb *transitions,
								   ArrayType *initial);
extern int	state_machine_find(const Machine *m, const char *state);
extern bool state_machine_has_edge(const Machine *m, int from, int to);
extern Datum state_machine_transitions_jsonb(const Machine *m);
extern Datum state_machine_initial_array(const Machine *m);

/* state_machine.c: the per-backend cache */
extern void state_guard_cache_begin_statement(void);
extern Oid	state_guard_tables_owner(void);
extern Machine *state_machine_lookup(const char *name);
extern GuardEntry *state_guard_entry(TriggerData *td);
extern Machine *state_guard_machine(GuardEntry *g, Relation rel);

/* state_machine.c: what a guarded column and table must be */
extern void state_guard_check_column(Relation rel, AttrNumber attnum,
									 Oid *typoutput, bool *bpchar);
extern int	state_guard_primary_key(Relation rel, AttrNumber *attnums);

/* state_guard_ddl.c */
extern char *state_guard_column_machine(Relation rel, AttrNumber attnum);

#endif							/* STATE_GUARD_H */
