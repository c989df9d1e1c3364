/*-------------------------------------------------------------------------
 *
 * reservation.h
 *	  The rows of a sale's hot path, read and written without SQL
 *	  (reservation_rows.c), for reservation.c.
 *
 *-------------------------------------------------------------------------
 */
#ifndef PAYMENTS_RESERVATION_H
#define PAYMENTS_RESERVATION_H

#include "payments.h"

extern int32 payments_take_units(text *sku, int64 qty, int32 hint, int32 seed);
extern int64 payments_insert_hold(text *order_ref, text *sku, int64 qty,
								  Datum ttl);
extern char payments_confirm_hold(int64 id);

#endif							/* PAYMENTS_RESERVATION_H */
