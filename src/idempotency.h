/*-------------------------------------------------------------------------
 *
 * idempotency.h
 *	  Idempotency keys (idempotency.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef PAYMENTS_IDEMPOTENCY_H
#define PAYMENTS_IDEMPOTENCY_H

extern void idempotency_init(void);

#endif							/* PAYMENTS_IDEMPOTENCY_H */
