/* pcaprec.h: walking classic pcap records in a memory buffer, for bulk's C
 * accelerators (csrc/NAME.c, built as bulk._NAME by setup.py).
 *
 * A buffer holds whole records followed perhaps by the start of one more (the
 * caller reads files in chunks and keeps that tail for the next chunk). The
 * 24-byte file header is the caller's business: it tells whether the file is
 * byte-swapped and whether the fraction is in nanoseconds.
 *
 * Record header (16 bytes, in the file's byte order): seconds, fraction
 * (microseconds or nanoseconds), captured length, wire length.
 */
#ifndef BULK_PCAPREC_H
#define BULK_PCAPREC_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define PCAPREC_HEADER 16

/* libpcap refuses records longer than this (pcap-common.h MAXIMUM_SNAPLEN, and
 * its savefile reader's "bogus" check above it); so do we. */
#define PCAPREC_MAX_CAPLEN 262144u

typedef struct {
    uint32_t sec;
    uint32_t frac;   /* microseconds or nanoseconds, as the file header says */
    uint32_t caplen;
    uint32_t len;
    const unsigned char *data; /* caplen bytes */
} pcaprec_t;

enum {
    PCAPREC_OK = 1,     /* a whole record was read; *pos moved past it */
    PCAPREC_SHORT = 0,  /* the buffer ends inside the next record (or is exhausted) */
    PCAPREC_BOGUS = -1, /* the next header's captured length is impossible */
};

static inline uint32_t pcaprec_u32(const unsigned char *p, int swapped)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return swapped ? __builtin_bswap32(v) : v;
}

/* Reads the record at buf[*pos] (see the PCAPREC_* results), with the
 * caller's limit on the captured length (bulk's readers allow
 * max(snaplen, PCAPREC_MAX_CAPLEN)). Only sec, frac and caplen are filled in
 * (and data): the walks that cut frames need no more. caplen is set on
 * PCAPREC_BOGUS too, for the error message. */
static inline int pcaprec_next_max(const unsigned char *buf, size_t size, size_t *pos,
                                   int swapped, uint32_t maxcap, pcaprec_t *rec)
{
    size_t at = *pos;
    if (at > size || size - at < PCAPREC_HEADER)
        return PCAPREC_SHORT;
    const unsigned char *h = buf + at;
    rec->caplen = pcaprec_u32(h + 8, swapped);
    if (rec->caplen > maxcap)
        return PCAPREC_BOGUS;
    if (size - at - PCAPREC_HEADER < rec->caplen)
        return PCAPREC_SHORT;
    rec->sec = pcaprec_u32(h, swapped);
    rec->frac = pcaprec_u32(h + 4, swapped);
    rec->data = h + PCAPREC_HEADER;
    *pos = at + PCAPREC_HEADER + rec->caplen;
    return PCAPREC_OK;
}

/* pcaprec_next_max with libpcap's limit (PCAPREC_MAX_CAPLEN), the wire
 * length filled in too. */
static inline int pcaprec_next(const unsigned char *buf, size_t size, size_t *pos,
                               int swapped, pcaprec_t *rec)
{
    int r = pcaprec_next_max(buf, size, pos, swapped, PCAPREC_MAX_CAPLEN, rec);
    if (r == PCAPREC_OK)
        rec->len = pcaprec_u32(rec->data - 4, swapped);
    return r;
}

/* Nanoseconds since the epoch of a record's timestamp. */
static inline int64_t pcaprec_ns(const pcaprec_t *rec, int nsec)
{
    return (int64_t)rec->sec * 1000000000 + (int64_t)rec->frac * (nsec ? 1 : 1000);
}

#endif
