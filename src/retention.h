/*-------------------------------------------------------------------------
 *
 * retention.h
 *	  How long the extension keeps the rows its capabilities are done with,
 *	  and the purge that applies it (retention.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef PAYMENTS_RETENTION_H
#define PAYMENTS_RETENTION_H

extern void retention_init(void);

#endif							/* PAYMENTS_RETENTION_H */
