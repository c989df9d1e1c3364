/*-------------------------------------------------------------------------
 *
 * fault.h
 *	  Named fault points at the critical steps of every capability
 *	  (fault.c), armed by a superuser to drill what a failure there does.
 *
 * A point costs one atomic read while nothing is armed anywhere.
 *
 *-------------------------------------------------------------------------
 */
#ifndef PAYMENTS_FAULT_H
#define PAYMENTS_FAULT_H

#include "port/atomics.h"

/* The points, in the order payments.fault_points lists them */
typedef enum PaymentsFaultPoint
{
	FAULT_IDEMPOTENCY_BEGIN,
	FAULT_IDEMPOTENCY_COMPLETE,
	FAULT_RESERVE_AFTER_TAKE,
	FAULT_RESERVATION_CONFIRM,
	FAULT_RESERVATION_EXPIRE_BATCH,
	FAULT_WORKER_AFTER_CLAIM,
	FAULT_WORKER_AFTER_HANDLER,
	FAULT_CALLBACK_AFTER_DEDUPE,
	FAULT_RECONCILE_MID_RUN,
	FAULT_TCC_FENCE_WRITE,
	FAULT_SAGA_CHAIN_STEP,
	PAYMENTS_NUM_FAULT_POINTS
} PaymentsFaultPoint;

/* How many points are armed; NULL unless the library was preloaded */
extern pg_atomic_uint32 *payments_faults_armed;

extern bool payments_fault_hit(PaymentsFaultPoint point);
extern void fault_init(void);

/*
 * Pass the point: does nothing unless it is armed.  True when the point is
 * armed to deliver its step twice, for the points whose callers can.
 */
#define PAYMENTS_FAULT(point) \
	(unlikely(payments_faults_armed != NULL && \
			  pg_atomic_read_u32(payments_faults_armed) != 0) && \
	 payments_fault_hit(point))

#endif							/* PAYMENTS_FAULT_H */
