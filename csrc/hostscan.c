/* hostscan.c: the per-packet part of the host index (bulk/archive/hostindex.py),
 * built as bulk._hostscan.
 *
 * A Scanner walks the classic pcap records of one trace, in chunks handed in
 * by Python (bulk.archive.hostindex._walk_native reads the file), and does in
 * C what the Python walk does for every record:
 *
 * - the time walk (_Walk: packets, first, last, lowest and highest time,
 *   ordered). In libpcap mode (microsecond pcap, read by libpcap in the Python
 *   twin) the time keys are folded in batches of BATCH records exactly as
 *   _drain folds next_batch's (sec << 32 | usec keys, compared as keys inside
 *   a batch and in nanoseconds across batches), so that even bogus microsecond
 *   fields give the same figures; records longer than the snapshot length are
 *   cut to it, as libpcap cuts them. In nanosecond mode (the Python twin reads
 *   with bulk.trace) the times are plain nanoseconds.
 * - the common cases of Collector.add: IPv4 without options and not a later
 *   fragment, and IPv6 whose next header is not an extension header, behind
 *   Ethernet (with any number of 802.1Q/802.1ad tags up to the generic
 *   decoder's depth), Linux cooked (v1, v2), raw IP and BSD loopback. Their
 *   addresses, ports (TCP, UDP, SCTP), protocols and "ip"/"ip6" are kept in C
 *   sets. Every other record (ARP, MPLS, PPPoE, options, fragments, extension
 *   headers, short or odd packets) is handed back to Python's generic decoder
 *   whole; C records nothing of it, so that the union is the Python result.
 *
 * Interface (tests/unit/test_hostscan.py compares it with BULK_NO_NATIVE=1):
 *
 *   Scanner(linktype, decode, swapped, nanosecond, snapshot)
 *       decode: the Collector decodes this link type (else records are only
 *       counted and timed: Python marks the index incomplete anyway).
 *       snapshot: libpcap's snapshot length (records are cut to it; libpcap
 *       mode), 0 in nanosecond mode (no cut).
 *   feed(buf, size) -> (used, status, slow)
 *       Walks the whole records in buf[0:size] (the GIL released). used: the
 *       bytes of whole records walked; status 0: the buffer ends inside a record
 *       (or is exhausted), -1: the record at buf[used] has a captured length
 *       above 262144 (bogus); slow: the records (bytes, cut as libpcap cuts
 *       them) for Python's decoder.
 *   end(error)
 *       Folds the last, partial batch: whole when the trace ended cleanly, one
 *       record at a time after an error (what _walk_libpcap's re-read does).
 *   walk() -> (packets, first_ns, last_ns, min_ns, max_ns, ordered)
 *   finish(addr4, addr6, ports) -> (addr4, addr6, ports, protos, l3)
 *       Merges Python's own sorted blobs (4-byte, 16-byte, {proto: 2-byte})
 *       into the C sets and returns the union, sorted and joined as
 *       Collector.finish returns them, plus the protocol numbers and l3 kinds
 *       ("ip", "ip6") the C side saw.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdlib.h>

#include "pcaprec.h"

/* bulk/archive/hostindex.py: _BATCH, LINKTYPE_*, _MAX_DEPTH, _VLAN_TPIDS, _IPV6_EXT */
#define BATCH 4096
#define LT_NULL 0
#define LT_ETHERNET 1
#define LT_RAW 101
#define LT_LOOP 108
#define LT_LINUX_SLL 113
#define LT_IPV4 228
#define LT_IPV6 229
#define LT_LINUX_SLL2 276
#define MAX_DEPTH 16

#define L3_IP 1
#define L3_IP6 2

/* -- sets ----------------------------------------------------------------------------- */

/* IPv4 addresses (big-endian values as integers): open addressing, 0 = empty slot. */
typedef struct {
    uint32_t *slots;
    size_t cap; /* a power of 2, or 0 */
    size_t count;
    int has_zero;
} set4_t;

/* IPv6 addresses: 16-byte keys, a used flag per slot. */
typedef struct {
    unsigned char *keys;
    unsigned char *used;
    size_t cap;
    size_t count;
} set16_t;

static inline size_t hash32(uint32_t v)
{
    uint64_t h = (uint64_t)v * 0x9E3779B97F4A7C15ull;
    return (size_t)(h >> 32);
}

static inline size_t hash16(const unsigned char *k)
{
    uint64_t a, b;
    memcpy(&a, k, 8);
    memcpy(&b, k + 8, 8);
    uint64_t h = (a ^ (b * 0xC2B2AE3D27D4EB4Full)) * 0x9E3779B97F4A7C15ull;
    return (size_t)(h ^ (h >> 29));
}

/* 0 on success, -1 when out of memory (the set is unchanged). */
static int set4_grow(set4_t *s)
{
    size_t cap = s->cap ? s->cap * 2 : 256;
    uint32_t *slots = calloc(cap, sizeof(uint32_t));
    if (slots == NULL)
        return -1;
    for (size_t i = 0; i < s->cap; i++) {
        uint32_t v = s->slots[i];
        if (v == 0)
            continue;
        size_t j = hash32(v) & (cap - 1);
        while (slots[j] != 0)
            j = (j + 1) & (cap - 1);
        slots[j] = v;
    }
    free(s->slots);
    s->slots = slots;
    s->cap = cap;
    return 0;
}

static int set4_add(set4_t *s, uint32_t v)
{
    if (v == 0) {
        s->has_zero = 1;
        return 0;
    }
    if ((s->count + 1) * 2 > s->cap && set4_grow(s) < 0)
        return -1;
    size_t mask = s->cap - 1;
    size_t j = hash32(v) & mask;
    while (s->slots[j] != 0) {
        if (s->slots[j] == v)
            return 0;
        j = (j + 1) & mask;
    }
    s->slots[j] = v;
    s->count++;
    return 0;
}

static int set16_grow(set16_t *s)
{
    size_t cap = s->cap ? s->cap * 2 : 64;
    unsigned char *keys = malloc(cap * 16);
    unsigned char *used = calloc(cap, 1);
    if (keys == NULL || used == NULL) {
        free(keys);
        free(used);
        return -1;
    }
    for (size_t i = 0; i < s->cap; i++) {
        if (!s->used[i])
            continue;
        const unsigned char *k = s->keys + i * 16;
        size_t j = hash16(k) & (cap - 1);
        while (used[j])
            j = (j + 1) & (cap - 1);
        memcpy(keys + j * 16, k, 16);
        used[j] = 1;
    }
    free(s->keys);
    free(s->used);
    s->keys = keys;
    s->used = used;
    s->cap = cap;
    return 0;
}

static int set16_add(set16_t *s, const unsigned char *k)
{
    if ((s->count + 1) * 2 > s->cap && set16_grow(s) < 0)
        return -1;
    size_t mask = s->cap - 1;
    size_t j = hash16(k) & mask;
    while (s->used[j]) {
        if (memcmp(s->keys + j * 16, k, 16) == 0)
            return 0;
        j = (j + 1) & mask;
    }
    memcpy(s->keys + j * 16, k, 16);
    s->used[j] = 1;
    s->count++;
    return 0;
}

/* -- the scanner ---------------------------------------------------------------------- */

typedef struct {
    size_t off;
    uint32_t len;
} slow_t;

typedef struct {
    PyObject_HEAD
    int linktype;
    int decode;
    int swapped;
    int nsec;
    uint32_t snapshot; /* libpcap mode: records are cut to this many bytes */
    /* the time walk (_Walk) */
    unsigned long long packets;
    int64_t first, last, lo, hi;
    int ordered;
    size_t nkeys;           /* keys of the current batch (libpcap mode) */
    uint64_t keys[BATCH];   /* sec << 32 | usec */
    /* what the fast cases saw */
    set4_t addr4;
    set16_t addr6;
    unsigned char ports[3][65536 / 8]; /* tcp, udp, sctp */
    unsigned char protos[256 / 8];
    int l3;
    int nomem;
    int busy; /* a feed runs without the GIL: no other call may touch the scanner */
    /* records handed back, per feed */
    slow_t *slow;
    size_t nslow, slow_cap;
} Scanner;

static inline unsigned be16(const unsigned char *p)
{
    return (unsigned)p[0] << 8 | p[1];
}

static inline uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline int port_slot(unsigned proto)
{
    return proto == 6 ? 0 : proto == 17 ? 1 : proto == 132 ? 2 : -1;
}

static inline void add_port(Scanner *s, int slot, unsigned port)
{
    s->ports[slot][port >> 3] |= (unsigned char)(1u << (port & 7));
}

static inline void add_proto(Scanner *s, unsigned proto)
{
    s->protos[proto >> 3] |= (unsigned char)(1u << (proto & 7));
}

/* Collector._ipv4 for an IPv4 header without options that is not a later
 * fragment, with its 4 bytes of ports present: 1 if recorded, 0 if not that. */
static inline int fast4(Scanner *s, const unsigned char *d, size_t n, size_t off)
{
    if (n < off + 24 || d[off] != 0x45 || (d[off + 6] & 0x1F) || d[off + 7])
        return 0;
    unsigned proto = d[off + 9];
    if (set4_add(&s->addr4, be32(d + off + 12)) < 0 ||
        set4_add(&s->addr4, be32(d + off + 16)) < 0) {
        s->nomem = 1;
        return 1;
    }
    add_proto(s, proto);
    s->l3 |= L3_IP;
    int slot = port_slot(proto);
    if (slot >= 0) {
        add_port(s, slot, be16(d + off + 20));
        add_port(s, slot, be16(d + off + 22));
    }
    return 1;
}

/* Collector._ipv6 when the next header is not an extension header, with its 4
 * bytes of ports present: 1 if recorded, 0 if not that. */
static inline int fast6(Scanner *s, const unsigned char *d, size_t n, size_t off)
{
    if (n < off + 44)
        return 0;
    unsigned nh = d[off + 6];
    switch (nh) {
    case 0: case 43: case 44: case 51: case 60: case 135: case 139: case 140:
        return 0;
    default:
        break;
    }
    if (set16_add(&s->addr6, d + off + 8) < 0 || set16_add(&s->addr6, d + off + 24) < 0) {
        s->nomem = 1;
        return 1;
    }
    add_proto(s, nh);
    s->l3 |= L3_IP6;
    int slot = port_slot(nh);
    if (slot >= 0) {
        add_port(s, slot, be16(d + off + 40));
        add_port(s, slot, be16(d + off + 42));
    }
    return 1;
}

/* Collector._ethertype's IPv4/IPv6 cases, through VLAN tags. */
static inline int fast_ether(Scanner *s, const unsigned char *d, size_t n, unsigned et,
                             size_t off)
{
    for (int depth = 0; depth <= MAX_DEPTH; depth++) {
        switch (et) {
        case 0x0800:
            return fast4(s, d, n, off);
        case 0x86DD:
            return fast6(s, d, n, off);
        case 0x8100: case 0x88A8: case 0x9100: case 0x9200:
            if (off + 4 > n)
                return 0;
            et = be16(d + off + 2);
            off += 4;
            break;
        default:
            return 0;
        }
    }
    return 0;
}

/* 1 if the record was recorded in C, 0 if Python's decoder must see it. */
static inline int fast(Scanner *s, const unsigned char *d, size_t n)
{
    switch (s->linktype) {
    case LT_ETHERNET:
        return n >= 14 && fast_ether(s, d, n, be16(d + 12), 14);
    case LT_LINUX_SLL:
        return n >= 16 && fast_ether(s, d, n, be16(d + 14), 16);
    case LT_LINUX_SLL2:
        return n >= 2 && fast_ether(s, d, n, be16(d), 20);
    case LT_NULL:
    case LT_LOOP: {
        if (n < 4)
            return 0;
        uint32_t af = be32(d);
        if (af == 2 || af == 2u << 24)
            return fast4(s, d, n, 4);
        switch (af) {
        case 10: case 24: case 28: case 30:
        case 10u << 24: case 24u << 24: case 28u << 24: case 30u << 24:
            return fast6(s, d, n, 4);
        default:
            return 0;
        }
    }
    case LT_RAW:
        if (n < 1)
            return 0;
        if (d[0] >> 4 == 4)
            return fast4(s, d, n, 0);
        if (d[0] >> 4 == 6)
            return fast6(s, d, n, 0);
        return 0;
    case LT_IPV4:
        return fast4(s, d, n, 0);
    case LT_IPV6:
        return fast6(s, d, n, 0);
    default:
        return 0;
    }
}

/* _usec_key_ns: fits in 63 bits (2**32 s and 2**32 us). */
static inline int64_t key_ns(uint64_t key)
{
    return (int64_t)(key >> 32) * 1000000000 + (int64_t)(key & 0xFFFFFFFFu) * 1000;
}

/* _Walk.times over keys[0:n] (n > 0): the first key against the last time, the
 * batch's order judged on its keys, its extremes taken as keys. */
static void fold(Scanner *s, const uint64_t *keys, size_t n)
{
    int64_t k0 = key_ns(keys[0]);
    if (s->packets == 0)
        s->first = s->lo = s->hi = s->last = k0;
    else if (k0 < s->last)
        s->ordered = 0;
    uint64_t mn = keys[0], mx = keys[0];
    int sorted = 1;
    for (size_t i = 1; i < n; i++) {
        uint64_t k = keys[i];
        if (k < keys[i - 1])
            sorted = 0;
        if (k < mn)
            mn = k;
        if (k > mx)
            mx = k;
    }
    if (!sorted)
        s->ordered = 0;
    int64_t lo = key_ns(mn), hi = key_ns(mx);
    if (lo < s->lo)
        s->lo = lo;
    if (hi > s->hi)
        s->hi = hi;
    s->last = key_ns(keys[n - 1]);
    s->packets += n;
}

/* _Walk.times over nanosecond times, one at a time (the same as in runs). */
static inline void fold_ns(Scanner *s, int64_t ts)
{
    if (s->packets == 0)
        s->first = s->lo = s->hi = s->last = ts;
    else {
        if (ts < s->last)
            s->ordered = 0;
        if (ts < s->lo)
            s->lo = ts;
        if (ts > s->hi)
            s->hi = ts;
        s->last = ts;
    }
    s->packets++;
}

static int slow_push(Scanner *s, size_t off, uint32_t len)
{
    if (s->nslow == s->slow_cap) {
        size_t cap = s->slow_cap ? s->slow_cap * 2 : 256;
        slow_t *p = realloc(s->slow, cap * sizeof(slow_t));
        if (p == NULL)
            return -1;
        s->slow = p;
        s->slow_cap = cap;
    }
    s->slow[s->nslow].off = off;
    s->slow[s->nslow].len = len;
    s->nslow++;
    return 0;
}

/* -1 with RuntimeError when a feed (without the GIL, in another thread) runs. */
static int check_idle(const Scanner *s)
{
    if (s->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Scanner is in use by another thread");
        return -1;
    }
    return 0;
}

static int Scanner_init(Scanner *s, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"linktype", "decode", "swapped", "nanosecond", "snapshot", NULL};
    int linktype, decode, swapped, nsec;
    unsigned long long snapshot;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "ipppK:Scanner", kwlist, &linktype, &decode,
                                     &swapped, &nsec, &snapshot))
        return -1;
    if (check_idle(s) < 0)
        return -1;
    if (snapshot > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "snapshot must be within 0..2**32-1");
        return -1;
    }
    s->linktype = linktype;
    s->decode = decode;
    s->swapped = swapped;
    s->nsec = nsec;
    s->snapshot = nsec ? 0 : (uint32_t)snapshot;
    s->packets = 0;
    s->first = s->last = s->lo = s->hi = 0;
    s->ordered = 1;
    s->nkeys = 0;
    free(s->addr4.slots);
    memset(&s->addr4, 0, sizeof s->addr4);
    free(s->addr6.keys);
    free(s->addr6.used);
    memset(&s->addr6, 0, sizeof s->addr6);
    memset(s->ports, 0, sizeof s->ports);
    memset(s->protos, 0, sizeof s->protos);
    s->l3 = 0;
    s->nomem = 0;
    s->nslow = 0;
    return 0;
}

static void Scanner_dealloc(Scanner *s)
{
    free(s->addr4.slots);
    free(s->addr6.keys);
    free(s->addr6.used);
    free(s->slow);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static PyObject *Scanner_feed(Scanner *s, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t size;
    if (!PyArg_ParseTuple(args, "y*n:feed", &view, &size))
        return NULL;
    if (check_idle(s) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    if (size < 0 || size > view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "size must be within the buffer");
        return NULL;
    }
    const unsigned char *buf = view.buf;
    size_t pos = 0;
    int status;
    pcaprec_t rec;
    s->nslow = 0;
    s->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    for (;;) {
        size_t at = pos;
        status = pcaprec_next(buf, (size_t)size, &pos, s->swapped, &rec);
        if (status != PCAPREC_OK)
            break;
        if (s->nsec) {
            fold_ns(s, pcaprec_ns(&rec, 1));
        } else {
            s->keys[s->nkeys++] = (uint64_t)rec.sec << 32 | rec.frac;
            if (s->nkeys == BATCH) {
                fold(s, s->keys, BATCH);
                s->nkeys = 0;
            }
        }
        if (!s->decode)
            continue;
        uint32_t cap = rec.caplen;
        if (s->snapshot && cap > s->snapshot)
            cap = s->snapshot; /* libpcap reads the snapshot length and skips the rest */
        if (!fast(s, rec.data, cap) && slow_push(s, at + PCAPREC_HEADER, cap) < 0)
            s->nomem = 1;
        if (s->nomem)
            break;
    }
    Py_END_ALLOW_THREADS
    s->busy = 0;
    PyObject *slow = NULL, *result = NULL;
    if (s->nomem) {
        PyErr_NoMemory();
        goto done;
    }
    slow = PyList_New((Py_ssize_t)s->nslow);
    if (slow == NULL)
        goto done;
    for (size_t i = 0; i < s->nslow; i++) {
        PyObject *b =
            PyBytes_FromStringAndSize((const char *)buf + s->slow[i].off, s->slow[i].len);
        if (b == NULL)
            goto done;
        PyList_SET_ITEM(slow, (Py_ssize_t)i, b);
    }
    result = Py_BuildValue("niO", (Py_ssize_t)pos, status == PCAPREC_BOGUS ? -1 : 0, slow);
done:
    Py_XDECREF(slow);
    s->nslow = 0;
    PyBuffer_Release(&view);
    return result;
}

static PyObject *Scanner_end(Scanner *s, PyObject *args)
{
    int error;
    if (!PyArg_ParseTuple(args, "p:end", &error) || check_idle(s) < 0)
        return NULL;
    if (s->nkeys) {
        if (error) {
            for (size_t i = 0; i < s->nkeys; i++)
                fold(s, s->keys + i, 1);
        } else {
            fold(s, s->keys, s->nkeys);
        }
        s->nkeys = 0;
    }
    Py_RETURN_NONE;
}

static PyObject *Scanner_walk(Scanner *s, PyObject *noargs)
{
    (void)noargs;
    if (check_idle(s) < 0)
        return NULL;
    return Py_BuildValue("KLLLLO", s->packets, (long long)s->first, (long long)s->last,
                         (long long)s->lo, (long long)s->hi,
                         s->ordered ? Py_True : Py_False);
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static int cmp_16(const void *a, const void *b)
{
    return memcmp(a, b, 16);
}

static PyObject *addr4_blob(const set4_t *s)
{
    size_t n = s->count + (s->has_zero ? 1 : 0), k = 0;
    uint32_t *vals = malloc((n ? n : 1) * sizeof(uint32_t));
    if (vals == NULL)
        return PyErr_NoMemory();
    if (s->has_zero)
        vals[k++] = 0;
    for (size_t i = 0; i < s->cap; i++)
        if (s->slots[i] != 0)
            vals[k++] = s->slots[i];
    qsort(vals, n, sizeof(uint32_t), cmp_u32);
    PyObject *blob = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(n * 4));
    if (blob != NULL) {
        unsigned char *p = (unsigned char *)PyBytes_AS_STRING(blob);
        for (size_t i = 0; i < n; i++) {
            p[i * 4] = (unsigned char)(vals[i] >> 24);
            p[i * 4 + 1] = (unsigned char)(vals[i] >> 16);
            p[i * 4 + 2] = (unsigned char)(vals[i] >> 8);
            p[i * 4 + 3] = (unsigned char)vals[i];
        }
    }
    free(vals);
    return blob;
}

static PyObject *addr6_blob(const set16_t *s)
{
    size_t n = s->count, k = 0;
    unsigned char *vals = malloc((n ? n : 1) * 16);
    if (vals == NULL)
        return PyErr_NoMemory();
    for (size_t i = 0; i < s->cap; i++)
        if (s->used[i])
            memcpy(vals + 16 * k++, s->keys + 16 * i, 16);
    qsort(vals, n, 16, cmp_16);
    PyObject *blob = PyBytes_FromStringAndSize((const char *)vals, (Py_ssize_t)(n * 16));
    free(vals);
    return blob;
}

static PyObject *ports_blob(const unsigned char *bits)
{
    size_t n = 0;
    for (unsigned p = 0; p < 65536; p++)
        n += (bits[p >> 3] >> (p & 7)) & 1;
    PyObject *blob = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(n * 2));
    if (blob == NULL)
        return NULL;
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(blob);
    for (unsigned p = 0; p < 65536; p++) {
        if ((bits[p >> 3] >> (p & 7)) & 1) {
            *out++ = (unsigned char)(p >> 8);
            *out++ = (unsigned char)p;
        }
    }
    return blob;
}

/* Adds a blob of fixed-width values to the C sets; -1 with an exception set. */
static int merge_blob(Scanner *s, PyObject *obj, Py_ssize_t width, int slot)
{
    Py_buffer v;
    if (PyObject_GetBuffer(obj, &v, PyBUF_SIMPLE) < 0)
        return -1;
    int rc = 0;
    if (v.len % width) {
        PyErr_SetString(PyExc_ValueError, "a blob of values is not a whole number of them");
        rc = -1;
    }
    const unsigned char *p = v.buf;
    for (Py_ssize_t i = 0; rc == 0 && i + width <= v.len; i += width) {
        if (width == 4)
            rc = set4_add(&s->addr4, be32(p + i));
        else if (width == 16)
            rc = set16_add(&s->addr6, p + i);
        else
            add_port(s, slot, be16(p + i));
        if (rc < 0)
            PyErr_NoMemory();
    }
    PyBuffer_Release(&v);
    return rc;
}

static PyObject *Scanner_finish(Scanner *s, PyObject *args)
{
    static const unsigned port_protos[3] = {6, 17, 132};
    PyObject *a4, *a6, *ports;
    if (!PyArg_ParseTuple(args, "OOO!:finish", &a4, &a6, &PyDict_Type, &ports) ||
        check_idle(s) < 0)
        return NULL;
    if (merge_blob(s, a4, 4, 0) < 0 || merge_blob(s, a6, 16, 0) < 0)
        return NULL;
    for (int i = 0; i < 3; i++) {
        PyObject *key = PyLong_FromUnsignedLong(port_protos[i]);
        if (key == NULL)
            return NULL;
        PyObject *blob = PyDict_GetItemWithError(ports, key); /* borrowed */
        Py_DECREF(key);
        if (blob == NULL && PyErr_Occurred())
            return NULL;
        if (blob != NULL && merge_blob(s, blob, 2, i) < 0)
            return NULL;
    }
    PyObject *r4 = NULL, *r6 = NULL, *rports = NULL, *protos = NULL, *l3 = NULL, *res = NULL;
    if ((r4 = addr4_blob(&s->addr4)) == NULL || (r6 = addr6_blob(&s->addr6)) == NULL ||
        (rports = PyDict_New()) == NULL || (protos = PyList_New(0)) == NULL ||
        (l3 = PyList_New(0)) == NULL)
        goto done;
    for (int i = 0; i < 3; i++) {
        PyObject *key = PyLong_FromUnsignedLong(port_protos[i]);
        PyObject *blob = key ? ports_blob(s->ports[i]) : NULL;
        int rc = blob ? PyDict_SetItem(rports, key, blob) : -1;
        Py_XDECREF(key);
        Py_XDECREF(blob);
        if (rc < 0)
            goto done;
    }
    for (unsigned p = 0; p < 256; p++) {
        if ((s->protos[p >> 3] >> (p & 7)) & 1) {
            PyObject *v = PyLong_FromUnsignedLong(p);
            int rc = v ? PyList_Append(protos, v) : -1;
            Py_XDECREF(v);
            if (rc < 0)
                goto done;
        }
    }
    if (s->l3 & L3_IP) {
        PyObject *v = PyUnicode_FromString("ip");
        int rc = v ? PyList_Append(l3, v) : -1;
        Py_XDECREF(v);
        if (rc < 0)
            goto done;
    }
    if (s->l3 & L3_IP6) {
        PyObject *v = PyUnicode_FromString("ip6");
        int rc = v ? PyList_Append(l3, v) : -1;
        Py_XDECREF(v);
        if (rc < 0)
            goto done;
    }
    res = PyTuple_Pack(5, r4, r6, rports, protos, l3);
done:
    Py_XDECREF(r4);
    Py_XDECREF(r6);
    Py_XDECREF(rports);
    Py_XDECREF(protos);
    Py_XDECREF(l3);
    return res;
}

static PyMethodDef Scanner_methods[] = {
    {"feed", (PyCFunction)Scanner_feed, METH_VARARGS,
     "feed(buf, size) -> (used, status, slow): walk the whole records in buf[0:size]"},
    {"end", (PyCFunction)Scanner_end, METH_VARARGS,
     "end(error): fold the last batch (whole, or one record at a time after an error)"},
    {"walk", (PyCFunction)Scanner_walk, METH_NOARGS,
     "walk() -> (packets, first_ns, last_ns, min_ns, max_ns, ordered)"},
    {"finish", (PyCFunction)Scanner_finish, METH_VARARGS,
     "finish(addr4, addr6, ports) -> (addr4, addr6, ports, protos, l3)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ScannerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "bulk._hostscan.Scanner",
    .tp_doc = "The host index's walk over one trace's pcap records (see the module doc).",
    .tp_basicsize = sizeof(Scanner),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Scanner_init,
    .tp_dealloc = (destructor)Scanner_dealloc,
    .tp_methods = Scanner_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "bulk._hostscan",
    "The host index's per-packet walk in C (bulk/archive/hostindex.py has the twin).", -1,
    NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__hostscan(void)
{
    if (PyType_Ready(&ScannerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&ScannerType);
    if (PyModule_AddObject(m, "Scanner", (PyObject *)&ScannerType) < 0) {
        Py_DECREF(&ScannerType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "BATCH", BATCH) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
