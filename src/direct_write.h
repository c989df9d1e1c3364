/*-------------------------------------------------------------------------
 *
 * direct_write.h
 *	  Writing one row of the extension's own tables without SQL
 *	  (direct_write.c; its header says when and why).
 *
 * The only header of the extension that includes the executor's.
 *
 *-------------------------------------------------------------------------
 */
#ifndef PAYMENTS_DIRECT_WRITE_H
#define PAYMENTS_DIRECT_WRITE_H

#include "executor/executor.h"


typedef struct DirectWrite
{
	EState	   *estate;
	ResultRelInfo *rri;
	EPQState	epqstate;
	const AttrNumber *cols;		/* the columns an UPDATE sets */
	int			ncols;
} DirectWrite;

extern void payments_direct_begin(DirectWrite *dw, Relation rel,
								  Snapshot snapshot, CmdType cmd,
								  const AttrNumber *cols, int ncols);
extern void payments_direct_begin_ext(DirectWrite *dw, Relation rel,
									  Snapshot snapshot, CmdType cmd,
									  const AttrNumber *cols, int ncols,
									  bool speculative);
extern bool payments_direct_insert_if_absent(DirectWrite *dw,
											 TupleTableSlot *row,
											 Relation key_index);
extern void payments_direct_update(DirectWrite *dw, TupleTableSlot *row,
								   const Datum *values, const bool *nulls);
extern void payments_direct_refuse_before_row(Relation rel, bool update,
											  const char *detail);
extern TupleTableSlot *payments_direct_slot(DirectWrite *dw);
extern TupleTableSlot *payments_direct_table_slot(DirectWrite *dw);
extern void payments_direct_end(DirectWrite *dw);

#endif							/* PAYMENTS_DIRECT_WRITE_H */
