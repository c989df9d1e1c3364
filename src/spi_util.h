/*-------------------------------------------------------------------------
 *
 * spi_util.h
 *	  SPI plans prepared once per backend, with the extension's schema
 *	  substituted for @extschema@ (spi_util.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef PAYMENTS_SPI_UTIL_H
#define PAYMENTS_SPI_UTIL_H

#include "executor/spi.h"

extern SPIPlanPtr payments_prepare(SPIPlanPtr *cache, const char *sql,
								   int nargs, const Oid *argtypes);
extern uint64 payments_execute(SPIPlanPtr plan, Datum *values,
							   const char *nulls, int expected, long tcount);
extern uint64 payments_execute_once(const char *sql, int nargs,
									const Oid *argtypes, Datum *values,
									const char *nulls, int expected);
extern uint64 payments_execute_delegated(const char *fn, int nargs,
										 const Oid *argtypes, Datum *values,
										 const char *nulls);
extern char *payments_spi_first_text(int column);
extern uint64 payments_execute_citus(const char *sql, int nargs,
									 const Oid *argtypes, Datum *values,
									 const char *nulls, int expected);
extern Portal payments_cursor_open_once(const char *sql, int nargs,
										const Oid *argtypes, Datum *values);
extern uint64 payments_execute_latest(const char *sql, int nargs,
									  const Oid *argtypes, Datum *values,
									  const char *nulls, int expected);
extern uint64 payments_execute_plan_latest(SPIPlanPtr plan, Datum *values,
										   const char *nulls, int expected);

extern ErrorData *payments_run_in_subtransaction(void (*fn) (void *arg), void *arg);

#endif							/* PAYMENTS_SPI_UTIL_H */
