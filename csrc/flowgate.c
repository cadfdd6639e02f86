/* flowgate.c: the packet gate of `bulk backdoor`'s fast path, built as bulk._flowgate.
 *
 * Reads a classic pcap file itself (pread in 1 MiB chunks, GIL released) and
 * hands Python only the packets the backdoor analysis needs, one at a time
 * through the iterator protocol (no Python object is made for the others).
 * The pure-Python twin is bulk/analyzers/flowgate.py (PyGate); the tests
 * compare the two packet by packet and by the findings they lead to.
 *
 * What is delivered, per record in file order (the selection libpcap and
 * pcapy-ng's loop_filtered made in two passes before, now in one):
 *
 *   l2 < 0 (a link type the classifier does not know): every packet the
 *   program `other` accepts (no program: every packet); nothing is skipped.
 *
 *   l2 >= 0: a packet is a candidate when
 *     - `heads` accepts it (BPF: TCP heads, or the user's filter) and it has an
 *       IPv4 flow key (pcapy-ng's locate_ipv4: the version nibble at l2, or
 *       after one or two 802.1Q/802.1ad tags; IHL >= 5; TCP or UDP; the ports
 *       captured), and fewer than `cutoff` packets of that key (one direction)
 *       passed `heads` before it in this file (counted exactly; when
 *       COUNTS_MAX keys are counted, a new key clears the counts: memory stays
 *       bounded, at worst more heads reach Python); or
 *     - `other` accepts it (BPF: 'not ip') and it has no IPv4 flow key.
 *   A candidate is then skipped, at the moment Python asks for the next
 *   packet, when its connection is in the done set: the raw source and
 *   destination addresses and ports at the fixed offsets of IPv4 without
 *   options (12 bytes) or IPv6 with TCP right after the fixed header (36
 *   bytes), never a SYN (it may open a new connection on the same ports).
 *   Python adds both directions' keys when it decides a connection and
 *   discards them when the connection ends.
 *
 * Record reading follows libpcap's savefile reader: a record whose captured
 * length exceeds 262144 is an error ("invalid packet capture length"), one
 * longer than the file's snapshot length is cut to it, a file ending inside a
 * record is "truncated dump file" after every whole record was delivered.
 *
 * BPF: the programs pcap_compile made, run by libpcap's own bpf_filter
 * (called through a function pointer: see below) with the record's wire
 * length and the captured bytes (cut to the snapshot length), as libpcap's
 * savefile reader runs a filter.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pcaprec.h"

#define CHUNK (1u << 20)
/* Flow directions whose heads are counted per file before the counts start
 * again (20 bytes a slot, at most 2 slots a key: 20 MiB). */
#define COUNTS_MAX (1u << 19)
#define BUFCAP (CHUNK + PCAPREC_HEADER + PCAPREC_MAX_CAPLEN)

/* ------------------------------------------------------------------ BPF */

/* libpcap's struct bpf_insn (<pcap/bpf.h>), declared here: the module is not
 * linked against libpcap. The programs come packed in this layout from
 * pcap_compile (bulk.analyzers.flowgate.programs) and are run by libpcap's
 * own bpf_filter, the one its savefile reader runs, through the address the
 * caller takes from the libpcap that compiled them (ctypes). */
typedef struct {
    unsigned short code;
    unsigned char jt, jf;
    uint32_t k;
} bpf_insn_t;

_Static_assert(sizeof(bpf_insn_t) == 8, "struct bpf_insn is 8 bytes");

typedef unsigned int (*bpf_filter_fn)(const bpf_insn_t *pc, const unsigned char *p,
                                      unsigned int wirelen, unsigned int buflen);
typedef int (*bpf_validate_fn)(const bpf_insn_t *f, int len);

#define BPF_MAXINSNS 4096 /* libpcap's */

typedef struct {
    bpf_insn_t *insns;
    uint32_t n;
} prog_t;

/* Is the code one libpcap's bpf_filter runs? Its bpf_validate (1.9.1) checks
 * jumps, memory words, division by a constant 0 and the final return, but
 * lets through codes that bpf_filter does not know and abort()s on (0x08,
 * 0xffff, a MISC other than TAX/TXA): those are refused here. */
static int known_code(unsigned short c)
{
    switch (c) {
    case 0x00: case 0x01: case 0x02: case 0x03: case 0x04: case 0x05: case 0x06: case 0x07:
    case 0x0c: case 0x14: case 0x15: case 0x16: case 0x1c: case 0x1d: case 0x20: case 0x24:
    case 0x25: case 0x28: case 0x2c: case 0x2d: case 0x30: case 0x34: case 0x35: case 0x3c:
    case 0x3d: case 0x40: case 0x44: case 0x45: case 0x48: case 0x4c: case 0x4d: case 0x50:
    case 0x54: case 0x5c: case 0x60: case 0x61: case 0x64: case 0x6c: case 0x74: case 0x7c:
    case 0x80: case 0x81: case 0x84: case 0x87: case 0x94: case 0x9c: case 0xa4: case 0xac:
    case 0xb1:
        return 1;
    }
    return 0;
}

/* A program from its packed instructions (None: no program), checked once by
 * libpcap's bpf_validate (and known_code): bpf_filter trusts its program. */
static int prog_from_buffer(PyObject *obj, bpf_validate_fn validate, prog_t *prog)
{
    prog->insns = NULL;
    prog->n = 0;
    if (obj == Py_None)
        return 0;
    Py_buffer v;
    if (PyObject_GetBuffer(obj, &v, PyBUF_SIMPLE) < 0)
        return -1;
    if (v.len < (Py_ssize_t)sizeof(bpf_insn_t) || v.len % (Py_ssize_t)sizeof(bpf_insn_t) != 0 ||
        v.len / (Py_ssize_t)sizeof(bpf_insn_t) > BPF_MAXINSNS) {
        PyBuffer_Release(&v);
        PyErr_SetString(PyExc_ValueError,
                        "a BPF program is 1 to 4096 packed struct bpf_insn (8 bytes each)");
        return -1;
    }
    bpf_insn_t *insns = PyMem_Malloc((size_t)v.len); /* aligned for bpf_insn_t */
    if (insns == NULL) {
        PyBuffer_Release(&v);
        PyErr_NoMemory();
        return -1;
    }
    memcpy(insns, v.buf, (size_t)v.len);
    int n = (int)(v.len / (Py_ssize_t)sizeof(bpf_insn_t));
    PyBuffer_Release(&v);
    for (int i = 0; i < n; i++) {
        unsigned int code = insns[i].code;
        if (!known_code(insns[i].code)) {
            PyMem_Free(insns);
            PyErr_Format(PyExc_ValueError, "BPF instruction %d: libpcap's bpf_filter has no code %#x",
                         i, code);
            return -1;
        }
    }
    if (!validate(insns, n)) {
        PyMem_Free(insns);
        PyErr_SetString(PyExc_ValueError, "libpcap's bpf_validate refuses the BPF program");
        return -1;
    }
    prog->insns = insns;
    prog->n = (uint32_t)n;
    return 0;
}

static void prog_free(prog_t *prog)
{
    PyMem_Free(prog->insns);
    prog->insns = NULL;
    prog->n = 0;
}

/* ------------------------------------------------------------------ hashing */

static inline uint64_t mix(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

static uint64_t hash_bytes(const unsigned char *p, size_t n)
{
    uint64_t h = 0x9e3779b97f4a7c15ULL ^ n;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = mix(h ^ w);
        p += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, p, n);
    return mix(h ^ w);
}

/* ------------------------------------------------------------------ done set */

#define KEYMAX 36

typedef struct {
    uint8_t state; /* 0 empty, 1 full, 2 deleted */
    uint8_t len;
    uint8_t key[KEYMAX];
} dslot_t;

typedef struct {
    dslot_t *slots;
    size_t cap; /* a power of two */
    size_t used, deleted;
} doneset_t;

static int ds_init(doneset_t *s, size_t cap)
{
    s->slots = PyMem_Calloc(cap, sizeof(dslot_t));
    if (s->slots == NULL)
        return -1;
    s->cap = cap;
    s->used = s->deleted = 0;
    return 0;
}

/* The slot holding the key, or (insert) the first free one on its probe path. */
static dslot_t *ds_find(const doneset_t *s, const unsigned char *key, size_t len, int insert)
{
    size_t mask = s->cap - 1, i = (size_t)hash_bytes(key, len) & mask;
    dslot_t *free_slot = NULL;
    for (size_t probes = 0; probes < s->cap; probes++, i = (i + 1) & mask) {
        dslot_t *d = &s->slots[i];
        if (d->state == 0)
            return insert ? (free_slot ? free_slot : d) : NULL;
        if (d->state == 2) {
            if (free_slot == NULL)
                free_slot = d;
        } else if (d->len == len && memcmp(d->key, key, len) == 0) {
            return d;
        }
    }
    return insert ? free_slot : NULL;
}

static int ds_grow(doneset_t *s)
{
    size_t cap = s->cap;
    if ((s->used + 1) * 2 > cap)
        cap *= 2;
    dslot_t *old = s->slots;
    size_t oldcap = s->cap;
    if (ds_init(s, cap) < 0) {
        s->slots = old;
        s->cap = oldcap;
        return -1;
    }
    for (size_t i = 0; i < oldcap; i++) {
        if (old[i].state == 1) {
            dslot_t *d = ds_find(s, old[i].key, old[i].len, 1);
            *d = old[i];
            s->used++;
        }
    }
    PyMem_Free(old);
    return 0;
}

static int ds_add(doneset_t *s, const unsigned char *key, size_t len)
{
    if ((s->used + s->deleted + 1) * 4 > s->cap * 3 && ds_grow(s) < 0)
        return -1;
    dslot_t *d = ds_find(s, key, len, 1);
    if (d->state == 1)
        return 0;
    if (d->state == 2)
        s->deleted--;
    d->state = 1;
    d->len = (uint8_t)len;
    memcpy(d->key, key, len);
    s->used++;
    return 0;
}

static int ds_discard(doneset_t *s, const unsigned char *key, size_t len)
{
    dslot_t *d = ds_find(s, key, len, 0);
    if (d == NULL || d->state != 1)
        return 0;
    d->state = 2;
    s->used--;
    s->deleted++;
    return 1;
}

static inline int ds_has(const doneset_t *s, const unsigned char *key, size_t len)
{
    if (s->used == 0)
        return 0;
    const dslot_t *d = ds_find(s, key, len, 0);
    return d != NULL;
}

/* ------------------------------------------------------------------ head counts */

/* One direction of an IPv4 flow: addresses, ports and protocol, as pcapy-ng
 * keyed its flow-head counter (but counted exactly, no collisions). */
typedef struct {
    uint8_t key[13];
    uint8_t used;
    uint32_t count;
} cslot_t;

typedef struct {
    cslot_t *slots;
    size_t cap, used;
} counts_t;

static int ct_init(counts_t *t, size_t cap)
{
    t->slots = calloc(cap, sizeof(cslot_t)); /* filled with the GIL released: malloc */
    if (t->slots == NULL)
        return -1;
    t->cap = cap;
    t->used = 0;
    return 0;
}

static cslot_t *ct_slot(counts_t *t, const uint8_t key[13])
{
    size_t mask = t->cap - 1, i = (size_t)hash_bytes(key, 13) & mask;
    for (;;) {
        cslot_t *c = &t->slots[i];
        if (!c->used || memcmp(c->key, key, 13) == 0)
            return c;
        i = (i + 1) & mask;
    }
}

/* The number of packets of this key counted before, and count this one. A
 * new key when `max` keys are counted clears the table first (every count
 * starts again: memory stays bounded, at worst more heads reach Python).
 * UINT32_MAX when memory ran out (the caller then fails the read). */
static uint32_t ct_bump(counts_t *t, const uint8_t key[13], size_t max)
{
    cslot_t *c = ct_slot(t, key);
    if (!c->used) {
        if (t->used >= max) {
            memset(t->slots, 0, t->cap * sizeof(cslot_t));
            t->used = 0;
        } else if ((t->used + 1) * 2 > t->cap) {
            counts_t bigger;
            if (ct_init(&bigger, t->cap * 2) < 0)
                return UINT32_MAX;
            for (size_t i = 0; i < t->cap; i++) {
                if (t->slots[i].used)
                    *ct_slot(&bigger, t->slots[i].key) = t->slots[i];
            }
            bigger.used = t->used;
            free(t->slots);
            *t = bigger;
        }
        c = ct_slot(t, key);
        memcpy(c->key, key, 13);
        c->used = 1;
        c->count = 0;
        t->used++;
    }
    uint32_t before = c->count;
    if (c->count < UINT32_MAX - 1)
        c->count++;
    return before;
}

/* ------------------------------------------------------------------ the gate */

typedef struct {
    uint32_t off, caplen, wirelen;
    int64_t ts;
} cand_t;

enum { ERR_NONE = 0, ERR_TRUNCATED, ERR_CORRUPT, ERR_OS, ERR_NOMEM };

typedef struct {
    PyObject_HEAD
    doneset_t done;
    /* the open file */
    int fd; /* -1: none */
    int swapped, nsec;
    uint32_t snapshot;
    int l2, et_off;
    uint32_t cutoff;
    size_t counts_max;
    prog_t heads, other;
    bpf_filter_fn bpf_filter; /* libpcap's, for heads and other */
    counts_t counts;
    unsigned char *buf;
    size_t size;     /* bytes in buf */
    size_t walked;   /* records walked up to here */
    uint64_t fileoff; /* file offset of buf[size] */
    int eof;
    int err;          /* pending error: raised once the candidates before it are out */
    int err_errno;
    char errmsg[160];
    cand_t *cands;
    size_t ncands, capcands, next;
    int busy;
    /* counters of the whole run */
    unsigned long long records, candidates, delivered, skipped;
} Gate;

static PyObject *TruncatedError, *CorruptError;

static void gate_close_file(Gate *g)
{
    g->fd = -1;
    prog_free(&g->heads);
    prog_free(&g->other);
    free(g->counts.slots);
    g->counts.slots = NULL;
    g->counts.cap = g->counts.used = 0;
    g->ncands = g->next = 0;
    g->size = g->walked = 0;
}

static int Gate_init(Gate *g, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, ":Gate", kwlist))
        return -1;
    if (g->done.slots == NULL && ds_init(&g->done, 1024) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    g->fd = -1;
    return 0;
}

static PyObject *Gate_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    (void)args;
    (void)kwds;
    Gate *g = (Gate *)type->tp_alloc(type, 0);
    if (g != NULL)
        g->fd = -1;
    return (PyObject *)g;
}

static void Gate_dealloc(Gate *g)
{
    gate_close_file(g);
    PyMem_Free(g->done.slots);
    free(g->buf);
    free(g->cands);
    Py_TYPE(g)->tp_free((PyObject *)g);
}

static int busy(Gate *g)
{
    if (g->busy) {
        PyErr_SetString(PyExc_RuntimeError, "the gate is in use by another thread");
        return 1;
    }
    return 0;
}

static int key_arg(PyObject *arg, Py_buffer *view)
{
    if (PyObject_GetBuffer(arg, view, PyBUF_SIMPLE) < 0)
        return -1;
    if (view->len < 1 || view->len > KEYMAX) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "a done-set key has 1 to 36 bytes");
        return -1;
    }
    return 0;
}

static PyObject *Gate_add(Gate *g, PyObject *arg)
{
    Py_buffer v;
    if (busy(g) || key_arg(arg, &v) < 0)
        return NULL;
    int r = ds_add(&g->done, v.buf, (size_t)v.len);
    PyBuffer_Release(&v);
    if (r < 0)
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *Gate_discard(Gate *g, PyObject *arg)
{
    Py_buffer v;
    if (busy(g) || key_arg(arg, &v) < 0)
        return NULL;
    ds_discard(&g->done, v.buf, (size_t)v.len);
    PyBuffer_Release(&v);
    Py_RETURN_NONE;
}

static int Gate_contains(Gate *g, PyObject *arg)
{
    Py_buffer v;
    if (PyObject_GetBuffer(arg, &v, PyBUF_SIMPLE) < 0)
        return -1;
    int r = v.len >= 1 && v.len <= KEYMAX && ds_has(&g->done, v.buf, (size_t)v.len);
    PyBuffer_Release(&v);
    return r;
}

static Py_ssize_t Gate_len(Gate *g) { return (Py_ssize_t)g->done.used; }

/* open(fd, swapped, nsec, snaplen, l2, et_off, cutoff, heads, other,
 *      (bpf_filter, bpf_validate)[, counts_max]):
 * start reading the records of a classic pcap file from byte 24 of fd (the
 * caller read and checked the file header; fd stays the caller's). heads and
 * other are packed struct bpf_insn arrays (or None); the pair holds the
 * addresses of bpf_filter and bpf_validate in the libpcap that compiled them. */
static PyObject *Gate_open(Gate *g, PyObject *args)
{
    int fd, swapped, nsec, l2, et_off;
    unsigned long snaplen, cutoff;
    unsigned long long filter_addr, validate_addr;
    Py_ssize_t counts_max = COUNTS_MAX;
    PyObject *heads, *other;
    if (busy(g))
        return NULL;
    if (!PyArg_ParseTuple(args, "ippkiikOO(KK)|n:open", &fd, &swapped, &nsec, &snaplen, &l2,
                          &et_off, &cutoff, &heads, &other, &filter_addr, &validate_addr,
                          &counts_max))
        return NULL;
    if (fd < 0 || l2 > 64 || et_off > 64 || cutoff > 0xffffffffUL || counts_max < 1 ||
        counts_max > (Py_ssize_t)COUNTS_MAX * 16) {
        PyErr_SetString(PyExc_ValueError, "fd, l2, et_off, cutoff or counts_max out of range");
        return NULL;
    }
    if (filter_addr == 0 || validate_addr == 0) {
        PyErr_SetString(PyExc_ValueError, "no address of libpcap's bpf_filter or bpf_validate");
        return NULL;
    }
    bpf_validate_fn validate = (bpf_validate_fn)(uintptr_t)validate_addr;
    gate_close_file(g);
    if (g->buf == NULL && (g->buf = malloc(BUFCAP)) == NULL)
        return PyErr_NoMemory();
    if (prog_from_buffer(heads, validate, &g->heads) < 0)
        return NULL;
    if (prog_from_buffer(other, validate, &g->other) < 0) {
        prog_free(&g->heads);
        return NULL;
    }
    if (l2 >= 0 && (g->heads.insns == NULL || g->other.insns == NULL)) {
        gate_close_file(g);
        PyErr_SetString(PyExc_ValueError, "a known link layer needs both programs");
        return NULL;
    }
    if (l2 >= 0 && ct_init(&g->counts, 4096) < 0) {
        gate_close_file(g);
        return PyErr_NoMemory();
    }
    g->bpf_filter = (bpf_filter_fn)(uintptr_t)filter_addr;
    g->fd = fd;
    g->swapped = swapped;
    g->nsec = nsec;
    /* libpcap: a snapshot length of 0 or above the maximum means the maximum */
    g->snapshot = (snaplen == 0 || snaplen > PCAPREC_MAX_CAPLEN) ? PCAPREC_MAX_CAPLEN
                                                                   : (uint32_t)snaplen;
    g->l2 = l2;
    g->et_off = et_off;
    g->cutoff = (uint32_t)cutoff;
    g->counts_max = (size_t)counts_max;
    g->fileoff = 24;
    g->eof = 0;
    g->err = ERR_NONE;
    g->errmsg[0] = 0;
    Py_RETURN_NONE;
}

/* pcapy-ng's locate_ipv4 and flow key: the IPv4 header at l2 or after one or
 * two VLAN tags, TCP or UDP, ports captured. Returns 1 and fills key[13]. */
static int flow_key(const unsigned char *p, uint32_t len, uint32_t l2, uint8_t key[13])
{
    for (int tags = 0;; tags++) {
        if (len < l2 + 20)
            return 0;
        if ((p[l2] >> 4) == 4)
            break;
        if (tags >= 2 || l2 < 2)
            return 0;
        if ((p[l2 - 2] == 0x81 && p[l2 - 1] == 0x00) || (p[l2 - 2] == 0x88 && p[l2 - 1] == 0xa8))
            l2 += 4;
        else
            return 0;
    }
    uint32_t ihl = (uint32_t)(p[l2] & 0x0f) * 4;
    uint8_t proto = p[l2 + 9];
    if (ihl < 20 || (proto != 6 && proto != 17) || len < l2 + ihl + 4)
        return 0;
    memcpy(key, p + l2 + 12, 8);          /* source, destination */
    memcpy(key + 8, p + l2 + ihl, 4);     /* ports */
    key[12] = proto;
    return 1;
}

/* Walk the whole records in buf from g->walked; candidates to g->cands. Runs
 * without the GIL: touches only the gate's own buffers. */
static void classify_chunk(Gate *g)
{
    pcaprec_t rec;
    size_t pos = g->walked;
    const bpf_filter_fn bpf = g->bpf_filter;
    g->ncands = g->next = 0;
    for (;;) {
        int r = pcaprec_next(g->buf, g->size, &pos, g->swapped, &rec);
        if (r == PCAPREC_SHORT)
            break;
        if (r == PCAPREC_BOGUS) {
            g->err = ERR_CORRUPT;
            if (g->snapshot < PCAPREC_MAX_CAPLEN)
                snprintf(g->errmsg, sizeof g->errmsg,
                         "invalid packet capture length %u, bigger than snaplen of %u",
                         rec.caplen, g->snapshot);
            else
                snprintf(g->errmsg, sizeof g->errmsg,
                         "invalid packet capture length %u, bigger than maximum of %u",
                         rec.caplen, PCAPREC_MAX_CAPLEN);
            break;
        }
        g->records++;
        uint32_t caplen = rec.caplen < g->snapshot ? rec.caplen : g->snapshot;
        const unsigned char *p = rec.data;
        int take;
        if (g->l2 < 0) {
            take = g->other.insns == NULL || bpf(g->other.insns, p, rec.len, caplen) != 0;
        } else {
            uint8_t key[13];
            int keyed = flow_key(p, caplen, (uint32_t)g->l2, key);
            if (keyed) {
                take = 0;
                if (bpf(g->heads.insns, p, rec.len, caplen) != 0) {
                    uint32_t before = ct_bump(&g->counts, key, g->counts_max);
                    if (before == UINT32_MAX) {
                        g->err = ERR_NOMEM;
                        break;
                    }
                    take = before < g->cutoff;
                }
            } else {
                take = bpf(g->other.insns, p, rec.len, caplen) != 0;
            }
        }
        if (!take)
            continue;
        if (g->ncands == g->capcands) {
            size_t cap = g->capcands ? g->capcands * 2 : 4096;
            cand_t *c = realloc(g->cands, cap * sizeof(cand_t));
            if (c == NULL) {
                g->err = ERR_NOMEM;
                break;
            }
            g->cands = c;
            g->capcands = cap;
        }
        cand_t *c = &g->cands[g->ncands++];
        c->off = (uint32_t)(p - g->buf);
        c->caplen = caplen;
        c->wirelen = rec.len;
        c->ts = pcaprec_ns(&rec, g->nsec);
    }
    g->walked = pos;
}

/* Read more of the file behind what is left in buf; sets eof/err. No GIL. */
static void refill(Gate *g)
{
    size_t rest = g->size - g->walked;
    if (rest && g->walked)
        memmove(g->buf, g->buf + g->walked, rest);
    g->size = rest;
    g->walked = 0;
    while (g->size < BUFCAP) {
        size_t want = BUFCAP - g->size;
        if (want > CHUNK)
            want = CHUNK;
        ssize_t n = pread(g->fd, g->buf + g->size, want, (off_t)g->fileoff);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            g->err = ERR_OS;
            g->err_errno = errno;
            return;
        }
        if (n == 0) {
            g->eof = 1;
            break;
        }
        g->size += (size_t)n;
        g->fileoff += (uint64_t)n;
        if (g->size >= CHUNK)
            break;
    }
}

/* libpcap's message for a file ending inside a record. */
static void truncation(Gate *g)
{
    size_t rest = g->size - g->walked;
    if (rest == 0)
        return;
    g->err = ERR_TRUNCATED;
    if (rest < PCAPREC_HEADER) {
        snprintf(g->errmsg, sizeof g->errmsg,
                 "truncated dump file; tried to read %u header bytes, only got %zu",
                 PCAPREC_HEADER, rest);
    } else {
        uint32_t caplen = pcaprec_u32(g->buf + g->walked + 8, g->swapped);
        uint32_t want = caplen < g->snapshot ? caplen : g->snapshot;
        size_t got = rest - PCAPREC_HEADER;
        snprintf(g->errmsg, sizeof g->errmsg,
                 "truncated dump file; tried to read %u captured bytes, only got %zu", want,
                 got < want ? got : (size_t)want);
    }
}

static PyObject *raise_pending(Gate *g)
{
    int err = g->err;
    g->err = ERR_NONE;
    g->fd = -1;
    switch (err) {
    case ERR_TRUNCATED:
        PyErr_SetString(TruncatedError, g->errmsg);
        break;
    case ERR_CORRUPT:
        PyErr_SetString(CorruptError, g->errmsg);
        break;
    case ERR_OS:
        errno = g->err_errno;
        PyErr_SetFromErrno(PyExc_OSError);
        break;
    default:
        PyErr_NoMemory();
    }
    return NULL;
}

/* Is this candidate a non-SYN packet of a connection in the done set? */
static inline int is_done(const Gate *g, const unsigned char *p, uint32_t caplen)
{
    if (g->l2 < 0 || g->done.used == 0)
        return 0;
    uint32_t b = (uint32_t)g->l2;
    int et = g->et_off;
    if (caplen >= b + 24 && p[b] == 0x45 &&
        (et < 0 || (p[et] == 0x08 && p[et + 1] == 0x00))) {
        if (caplen > b + 33 && (p[b + 33] & 0x02))
            return 0;
        return ds_has(&g->done, p + b + 12, 12);
    }
    if (caplen >= b + 44 && (p[b] & 0xf0) == 0x60 && p[b + 6] == 6 &&
        (et < 0 || (p[et] == 0x86 && p[et + 1] == 0xdd))) {
        if (caplen > b + 53 && (p[b + 53] & 0x02))
            return 0;
        return ds_has(&g->done, p + b + 8, 36);
    }
    return 0;
}

static PyObject *Gate_iternext(Gate *g)
{
    if (busy(g))
        return NULL;
    for (;;) {
        while (g->next < g->ncands) {
            const cand_t *c = &g->cands[g->next++];
            const unsigned char *p = g->buf + c->off;
            if (is_done(g, p, c->caplen)) {
                g->skipped++;
                continue;
            }
            g->delivered++;
            PyObject *ts = PyLong_FromLongLong(c->ts);
            PyObject *wl = PyLong_FromUnsignedLong(c->wirelen);
            PyObject *data = PyBytes_FromStringAndSize((const char *)p, c->caplen);
            if (ts == NULL || wl == NULL || data == NULL) {
                Py_XDECREF(ts);
                Py_XDECREF(wl);
                Py_XDECREF(data);
                return NULL;
            }
            PyObject *t = PyTuple_New(3);
            if (t == NULL) {
                Py_DECREF(ts);
                Py_DECREF(wl);
                Py_DECREF(data);
                return NULL;
            }
            PyTuple_SET_ITEM(t, 0, ts);
            PyTuple_SET_ITEM(t, 1, wl);
            PyTuple_SET_ITEM(t, 2, data);
            return t;
        }
        g->ncands = g->next = 0;
        if (g->err != ERR_NONE)
            return raise_pending(g);
        if (g->fd < 0)
            return NULL; /* StopIteration */
        if (g->eof) {
            truncation(g);
            if (g->err != ERR_NONE)
                return raise_pending(g);
            g->fd = -1;
            return NULL;
        }
        g->busy = 1;
        Py_BEGIN_ALLOW_THREADS
        refill(g);
        if (g->err == ERR_NONE)
            classify_chunk(g);
        Py_END_ALLOW_THREADS
        g->busy = 0;
        g->candidates += g->ncands;
    }
}

/* close(): forget the open file (its descriptor stays the caller's to close). */
static PyObject *Gate_close(Gate *g, PyObject *unused)
{
    (void)unused;
    if (busy(g))
        return NULL;
    gate_close_file(g);
    g->err = ERR_NONE;
    Py_RETURN_NONE;
}

static PyObject *Gate_stats(Gate *g, PyObject *unused)
{
    (void)unused;
    return Py_BuildValue("{sKsKsKsK}", "records", g->records, "candidates", g->candidates,
                         "delivered", g->delivered, "skipped", g->skipped);
}

static PyMethodDef Gate_methods[] = {
    {"add", (PyCFunction)Gate_add, METH_O, "add(key): a key of a decided connection"},
    {"discard", (PyCFunction)Gate_discard, METH_O, "discard(key): the connection ended"},
    {"open", (PyCFunction)Gate_open, METH_VARARGS,
     "open(fd, swapped, nsec, snaplen, l2, et_off, cutoff, heads, other, (bpf_filter, "
     "bpf_validate)[, counts_max]): read a file"},
    {"close", (PyCFunction)Gate_close, METH_NOARGS, "close(): forget the open file"},
    {"stats", (PyCFunction)Gate_stats, METH_NOARGS, "counters of the run"},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods Gate_as_sequence = {
    .sq_length = (lenfunc)Gate_len,
    .sq_contains = (objobjproc)Gate_contains,
};

static PyTypeObject GateType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "bulk._flowgate.Gate",
    .tp_basicsize = sizeof(Gate),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The backdoor fast path's packet gate (see csrc/flowgate.c).",
    .tp_new = Gate_new,
    .tp_init = (initproc)Gate_init,
    .tp_dealloc = (destructor)Gate_dealloc,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)Gate_iternext,
    .tp_methods = Gate_methods,
    .tp_as_sequence = &Gate_as_sequence,
};


static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "bulk._flowgate",
    "The backdoor fast path's packet gate (twin: bulk.analyzers.flowgate).", -1,
    NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__flowgate(void)
{
    if (PyType_Ready(&GateType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    TruncatedError = PyErr_NewException("bulk._flowgate.TruncatedError", NULL, NULL);
    CorruptError = PyErr_NewException("bulk._flowgate.CorruptError", NULL, NULL);
    if (TruncatedError == NULL || CorruptError == NULL ||
        PyModule_AddObject(m, "TruncatedError", TruncatedError) < 0) {
        Py_XDECREF(TruncatedError);
        Py_XDECREF(CorruptError);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddObject(m, "CorruptError", CorruptError) < 0) {
        Py_DECREF(CorruptError);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "COUNTS_MAX", COUNTS_MAX) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&GateType);
    if (PyModule_AddObject(m, "Gate", (PyObject *)&GateType) < 0) {
        Py_DECREF(&GateType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
