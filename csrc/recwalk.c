/* recwalk.c: the record walks of `bulk compress`, built as bulk._recwalk.
 *
 * Pure-Python twins in bulk/trace/framing.py (walk_pcap, count_pcap,
 * count_pcapng), bulk/trace/seekable.py (same_bytes) and
 * bulk/slicing/pcapfile.py (window_spans) give the same answers;
 * tests/unit/test_recwalk.py compares them. Every function reads a bytes-like
 * object (bytes, bytearray, memoryview, ctypes array) and releases the GIL while
 * it walks, so the walk overlaps with the compression threads.
 *
 *   walk_pcap(buf, pos, cut, maxcap, swapped, nanosecond)
 *       -> (pos, packets, first_ns, last_ns, min_ns, max_ns)
 *       Walks whole classic pcap records from buf[pos] while pos < cut; stops
 *       at the first record at or past cut, at a record the buffer ends inside,
 *       or at a captured length above maxcap (left for the caller to judge).
 *       The times are those of the records walked (all 0 when none was).
 *   count_pcap(buf, pos, maxcap, swapped) -> (packets, pos)
 *       The same walk to the end of buf (verification of a frame).
 *   count_pcapng(buf, pos, big_endian) -> (packets, pos)
 *       Walks pcapng blocks from buf[pos]: (packet blocks, where it stopped).
 *   window_spans(buf, pos, maxcap, swapped, nanosecond, start_ns, end_ns)
 *       -> (spans, pos)
 *       The same walk (as count_pcap); spans lists the byte ranges (a, b) of
 *       the runs of consecutive records with start_ns <= time <= end_ns, in
 *       order; pos is where the walk stopped. For the frames at the edges of
 *       a slice's window (twin: bulk/slicing/pcapfile.py, window_spans).
 *   same_bytes(a, b) -> bool
 *       a and b hold the same bytes (same length, memcmp).
 *   new_buffer(n) -> bytearray
 *       n bytes, not zeroed (the twin: bytearray(n)), for a buffer the caller
 *       fills before anything reads it: the splitter reads the file into it and
 *       cuts off what it did not fill. Zeroing 500 MB of frame buffers is a
 *       pass over memory of its own.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "pcaprec.h"

/* pcapng (bulk/trace/reader.py: MAX_BLOCK, PCAPNG_SHB, PCAPNG_BYTE_ORDER) */
#define PCAPNG_SHB 0x0A0D0D0Au
#define PCAPNG_BYTE_ORDER 0x1A2B3C4Du
#define PCAPNG_MAX_BLOCK (16u * 1024u * 1024u)

static int check_pos(Py_ssize_t pos)
{
    if (pos < 0) {
        PyErr_SetString(PyExc_ValueError, "pos must not be negative");
        return -1;
    }
    return 0;
}

static int check_maxcap(Py_ssize_t maxcap)
{
    if (maxcap < 0 || (unsigned long long)maxcap > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "maxcap must be within 0..2**32-1");
        return -1;
    }
    return 0;
}

static PyObject *walk_pcap(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer view;
    Py_ssize_t pos, cut, maxcap;
    int swapped, nsec;
    if (!PyArg_ParseTuple(args, "y*nnnpp:walk_pcap", &view, &pos, &cut, &maxcap, &swapped,
                          &nsec))
        return NULL;
    if (check_pos(pos) < 0 || check_maxcap(maxcap) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    const unsigned char *buf = view.buf;
    size_t size = (size_t)view.len;
    size_t at = (size_t)pos;
    size_t stop = cut < 0 ? 0 : (size_t)cut;
    unsigned long long n = 0;
    int64_t first = 0, last = 0, lo = 0, hi = 0;
    pcaprec_t rec;
    Py_BEGIN_ALLOW_THREADS
    while (at < stop && pcaprec_next_max(buf, size, &at, swapped, (uint32_t)maxcap, &rec) ==
                            PCAPREC_OK) {
        int64_t ts = pcaprec_ns(&rec, nsec);
        if (n == 0) {
            first = lo = hi = ts;
        } else if (ts < lo) {
            lo = ts;
        } else if (ts > hi) {
            hi = ts;
        }
        last = ts;
        n++;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return Py_BuildValue("(nKLLLL)", (Py_ssize_t)at, n, (long long)first, (long long)last,
                         (long long)lo, (long long)hi);
}

static PyObject *count_pcap(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer view;
    Py_ssize_t pos, maxcap;
    int swapped;
    if (!PyArg_ParseTuple(args, "y*nnp:count_pcap", &view, &pos, &maxcap, &swapped))
        return NULL;
    if (check_pos(pos) < 0 || check_maxcap(maxcap) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    const unsigned char *buf = view.buf;
    size_t size = (size_t)view.len;
    size_t at = (size_t)pos;
    unsigned long long n = 0;
    pcaprec_t rec;
    Py_BEGIN_ALLOW_THREADS
    while (pcaprec_next_max(buf, size, &at, swapped, (uint32_t)maxcap, &rec) == PCAPREC_OK)
        n++;
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return Py_BuildValue("(Kn)", n, (Py_ssize_t)at);
}

/* Appends the range [a, b) to spans (pairs a0, b0, a1, b1, ...); 0 if out of memory. */
static int push_span(size_t **spans, size_t *n, size_t *cap, size_t a, size_t b)
{
    if (*n == *cap) {
        size_t ncap = *cap ? 2 * *cap : 8;
        size_t *grown = realloc(*spans, ncap * 2 * sizeof **spans);
        if (grown == NULL)
            return 0;
        *spans = grown;
        *cap = ncap;
    }
    (*spans)[2 * *n] = a;
    (*spans)[2 * *n + 1] = b;
    (*n)++;
    return 1;
}

static PyObject *window_spans(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer view;
    Py_ssize_t pos, maxcap;
    int swapped, nsec;
    long long start, end;
    if (!PyArg_ParseTuple(args, "y*nnppLL:window_spans", &view, &pos, &maxcap, &swapped, &nsec,
                          &start, &end))
        return NULL;
    if (check_pos(pos) < 0 || check_maxcap(maxcap) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    const unsigned char *buf = view.buf;
    size_t size = (size_t)view.len;
    size_t at = (size_t)pos;
    size_t *spans = NULL;
    size_t n = 0, cap = 0;
    int ok = 1;
    pcaprec_t rec;
    Py_BEGIN_ALLOW_THREADS
    size_t run = SIZE_MAX; /* where the current run of records inside starts */
    size_t here = at;      /* where the record just read starts */
    while (ok && pcaprec_next_max(buf, size, &at, swapped, (uint32_t)maxcap, &rec) ==
                     PCAPREC_OK) {
        int64_t ts = pcaprec_ns(&rec, nsec);
        if (ts >= start && ts <= end) {
            if (run == SIZE_MAX)
                run = here;
        } else if (run != SIZE_MAX) {
            ok = push_span(&spans, &n, &cap, run, here);
            run = SIZE_MAX;
        }
        here = at;
    }
    if (ok && run != SIZE_MAX)
        ok = push_span(&spans, &n, &cap, run, at);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    PyObject *list = ok ? PyList_New((Py_ssize_t)n) : PyErr_NoMemory();
    for (size_t i = 0; list != NULL && i < n; i++) {
        PyObject *pair = Py_BuildValue("(nn)", (Py_ssize_t)spans[2 * i],
                                       (Py_ssize_t)spans[2 * i + 1]);
        if (pair == NULL)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, (Py_ssize_t)i, pair);
    }
    free(spans);
    return list == NULL ? NULL : Py_BuildValue("(Nn)", list, (Py_ssize_t)at);
}

static uint32_t u32_order(const unsigned char *p, int big)
{
    return big ? ((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3])
               : ((uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0]);
}

static PyObject *count_pcapng(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer view;
    Py_ssize_t pos;
    int big;
    if (!PyArg_ParseTuple(args, "y*np:count_pcapng", &view, &pos, &big))
        return NULL;
    if (check_pos(pos) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    const unsigned char *buf = view.buf;
    size_t size = (size_t)view.len;
    size_t at = (size_t)pos;
    unsigned long long n = 0;
    Py_BEGIN_ALLOW_THREADS
    while (at <= size && size - at >= 12) {
        const unsigned char *b = buf + at;
        uint32_t btype = u32_order(b, big);
        if (btype == PCAPNG_SHB)
            big = u32_order(b + 8, 1) == PCAPNG_BYTE_ORDER;
        uint32_t blen = u32_order(b + 4, big);
        if (blen < 12 || blen % 4 || blen > PCAPNG_MAX_BLOCK || blen > size - at)
            break;
        if (btype == 6 || btype == 2 || btype == 3)
            n++;
        at += blen;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return Py_BuildValue("(Kn)", n, (Py_ssize_t)at);
}

static PyObject *same_bytes(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer a, b;
    if (!PyArg_ParseTuple(args, "y*y*:same_bytes", &a, &b))
        return NULL;
    int same = a.len == b.len;
    if (same && a.len > 0) {
        Py_BEGIN_ALLOW_THREADS
        same = memcmp(a.buf, b.buf, (size_t)a.len) == 0;
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&a);
    PyBuffer_Release(&b);
    return PyBool_FromLong(same);
}

static PyObject *new_buffer(PyObject *self, PyObject *args)
{
    (void)self;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "n:new_buffer", &n))
        return NULL;
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "new_buffer: negative size");
        return NULL;
    }
    /* NULL: the bytes are left as they are (CPython does not zero them) */
    return PyByteArray_FromStringAndSize(NULL, n);
}

static PyMethodDef methods[] = {
    {"walk_pcap", walk_pcap, METH_VARARGS,
     "walk_pcap(buf, pos, cut, maxcap, swapped, nanosecond) -> "
     "(pos, packets, first_ns, last_ns, min_ns, max_ns)"},
    {"count_pcap", count_pcap, METH_VARARGS,
     "count_pcap(buf, pos, maxcap, swapped) -> (packets, pos)"},
    {"count_pcapng", count_pcapng, METH_VARARGS,
     "count_pcapng(buf, pos, big_endian) -> (packets, pos)"},
    {"window_spans", window_spans, METH_VARARGS,
     "window_spans(buf, pos, maxcap, swapped, nanosecond, start_ns, end_ns) -> (spans, pos)"},
    {"same_bytes", same_bytes, METH_VARARGS, "same_bytes(a, b) -> bool"},
    {"new_buffer", new_buffer, METH_VARARGS,
     "new_buffer(n) -> bytearray of n bytes, not zeroed"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "bulk._recwalk",
    "Record walks of bulk compress (see csrc/recwalk.c).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__recwalk(void)
{
    return PyModule_Create(&module);
}
