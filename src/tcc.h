/*-------------------------------------------------------------------------
 *
 * tcc.h
 *	  Declarations of the TCC fence (tcc_fence.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef PAYMENTS_TCC_H
#define PAYMENTS_TCC_H

extern void tcc_init(void);

#endif							/* PAYMENTS_TCC_H */
