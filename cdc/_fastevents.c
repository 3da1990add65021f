/* The envelope of a change event, located in its raw BSON bytes.
 *
 * scan(raw) walks the top-level elements of one change event exactly like
 * cdc/events.py's _scan/_decode_raw (lengths only, no value decoded) and returns
 * the offsets of the fields a data event needs, as a tuple of ints:
 *
 *   (op, token_start, token_end, t, i, ns_start, ns_end, key_start, key_end,
 *    full_start, full_end, lsid_start, lsid_end, txn_number)
 *
 * op is 0 insert, 1 update, 2 replace, 3 delete; a *_start of -1 means the field is
 * absent (fullDocument: absent or null; lsid: no transaction identity) and
 * txn_number is None then. Start/end delimit the element's value bytes (a document's
 * own int32 length included), so raw[start:end] is the embedded document.
 *
 * It returns None wherever the Python path declines (the caller then decodes the
 * event the general way): a length that does not fit, a missing terminator, a type
 * whose size the walker does not know (regex, DBPointer, ...), a splitEvent fragment,
 * an operation type other than the four data events, a required field missing or of
 * an unexpected type, fullDocument neither a document nor null, an lsid/txnNumber
 * pair of unexpected types. A field that occurs twice counts with its last value,
 * as in the Python dict. Nothing is read past the buffer.
 *
 * split_array(buf, start, stop) cuts the elements of a BSON array of documents (a
 * cursor reply's firstBatch/nextBatch) out of buf: start is the first element's type
 * byte, stop the array's terminating NUL. It returns each element's document as bytes,
 * like cdc/replies.py's _split_array, and raises ValueError where an element's name
 * has no terminator or its document does not fit before stop.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static int32_t rd_i32(const unsigned char *p) {
    uint32_t v = (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
                 ((uint32_t)p[3] << 24);
    return (int32_t)v;
}

static uint32_t rd_u32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

static int64_t rd_i64(const unsigned char *p) {
    uint64_t v = 0;
    for (int k = 7; k >= 0; k--) v = (v << 8) | p[k];
    return (int64_t)v;
}

enum { F_ID, F_OP, F_CT, F_NS, F_KEY, F_FULL, F_LSID, F_TXN, F_SPLIT, F_COUNT };

typedef struct {
    int kind;        /* BSON type byte, -1 when absent */
    Py_ssize_t start, stop;
} Field;

static int field_of(const unsigned char *name, Py_ssize_t len) {
#define IS(s) (len == (Py_ssize_t)(sizeof(s) - 1) && memcmp(name, s, sizeof(s) - 1) == 0)
    switch (name[0]) {
    case '_': return IS("_id") ? F_ID : -1;
    case 'o': return IS("operationType") ? F_OP : -1;
    case 'c': return IS("clusterTime") ? F_CT : -1;
    case 'n': return IS("ns") ? F_NS : -1;
    case 'd': return IS("documentKey") ? F_KEY : -1;
    case 'f': return IS("fullDocument") ? F_FULL : -1;
    case 'l': return IS("lsid") ? F_LSID : -1;
    case 't': return IS("txnNumber") ? F_TXN : -1;
    case 's': return IS("splitEvent") ? F_SPLIT : -1;
    default: return -1;
    }
#undef IS
}

/* Size of the value starting at `start` for BSON type `kind`; -1 unknown type. */
static Py_ssize_t value_size(int kind, const unsigned char *buf, Py_ssize_t start,
                             Py_ssize_t size, int *ok) {
    *ok = 1;
    switch (kind) {
    case 0x01: case 0x09: case 0x11: case 0x12: return 8;
    case 0x07: return 12;
    case 0x08: return 1;
    case 0x10: return 4;
    case 0x13: return 16;
    case 0x06: case 0x0A: case 0x7F: case 0xFF: return 0;
    case 0x02: case 0x0D: case 0x0E:
        if (start + 4 > size) { *ok = 0; return 0; }
        return 4 + (Py_ssize_t)rd_i32(buf + start);
    case 0x03: case 0x04: case 0x0F:
        if (start + 4 > size) { *ok = 0; return 0; }
        return (Py_ssize_t)rd_i32(buf + start);
    case 0x05:
        if (start + 4 > size) { *ok = 0; return 0; }
        return 5 + (Py_ssize_t)rd_i32(buf + start);
    default:
        *ok = 0;
        return 0;
    }
}

static PyObject *scan(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *buf = (const unsigned char *)view.buf;
    Py_ssize_t size = view.len;
    Field f[F_COUNT];
    for (int k = 0; k < F_COUNT; k++) f[k].kind = -1;
    PyObject *result = NULL;

    if (size < 5 || rd_i32(buf) != size) goto decline;
    Py_ssize_t end = size - 1, pos = 4;
    while (pos < end) {
        int kind = buf[pos];
        const unsigned char *name = buf + pos + 1;
        const unsigned char *zero = memchr(name, 0, (size_t)(size - (pos + 1)));
        if (zero == NULL) goto decline;
        Py_ssize_t name_len = zero - name;
        Py_ssize_t start = (zero - buf) + 1;
        int ok;
        Py_ssize_t width = value_size(kind, buf, start, size, &ok);
        if (!ok) goto decline;
        Py_ssize_t stop = start + width;
        if (stop > end || (stop <= start && kind != 0x0A && kind != 0x06 && kind != 0x7F &&
                           kind != 0xFF))
            goto decline;
        if (name_len > 0) {
            int which = field_of(name, name_len);
            if (which >= 0) {
                f[which].kind = kind;
                f[which].start = start;
                f[which].stop = stop;
            }
        }
        pos = stop;
    }
    if (pos != end || buf[end] != 0) goto decline;
    if (f[F_SPLIT].kind != -1) goto decline;

    /* operationType: a string whose bytes (without the NUL) name a data event. */
    if (f[F_OP].kind != 0x02) goto decline;
    Py_ssize_t op_len = f[F_OP].stop - f[F_OP].start - 5;
    const char *op_s = (const char *)buf + f[F_OP].start + 4;
    int op;
    if (op_len == 6 && memcmp(op_s, "insert", 6) == 0) op = 0;
    else if (op_len == 6 && memcmp(op_s, "update", 6) == 0) op = 1;
    else if (op_len == 7 && memcmp(op_s, "replace", 7) == 0) op = 2;
    else if (op_len == 6 && memcmp(op_s, "delete", 6) == 0) op = 3;
    else goto decline;
    if (f[F_ID].kind != 0x03 || f[F_CT].kind != 0x11 || f[F_NS].kind != 0x03 ||
        f[F_KEY].kind != 0x03)
        goto decline;

    uint32_t inc = rd_u32(buf + f[F_CT].start);
    uint32_t t = rd_u32(buf + f[F_CT].start + 4);

    Py_ssize_t lsid_start = -1, lsid_stop = -1;
    PyObject *txn = Py_None;
    int lsid_kind = f[F_LSID].kind, txn_kind = f[F_TXN].kind;
    if (lsid_kind != -1 && lsid_kind != 0x0A && txn_kind != -1 && txn_kind != 0x0A) {
        if (lsid_kind != 0x03 || (txn_kind != 0x10 && txn_kind != 0x12)) goto decline;
        int64_t number = txn_kind == 0x12 ? rd_i64(buf + f[F_TXN].start)
                                          : (int64_t)rd_i32(buf + f[F_TXN].start);
        txn = PyLong_FromLongLong(number);
        if (txn == NULL) goto done;
        lsid_start = f[F_LSID].start;
        lsid_stop = f[F_LSID].stop;
    } else {
        Py_INCREF(txn);
    }

    Py_ssize_t full_start = -1, full_stop = -1;
    if (op != 3) {
        int full_kind = f[F_FULL].kind;
        if (full_kind == 0x03) {
            full_start = f[F_FULL].start;
            full_stop = f[F_FULL].stop;
        } else if (full_kind != -1 && full_kind != 0x0A) {
            Py_DECREF(txn);
            goto decline;
        }
    }
    result = Py_BuildValue("(innkknnnnnnnnN)", op, f[F_ID].start, f[F_ID].stop,
                           (unsigned long)t, (unsigned long)inc, f[F_NS].start,
                           f[F_NS].stop, f[F_KEY].start, f[F_KEY].stop, full_start,
                           full_stop, lsid_start, lsid_stop, txn);
    goto done;

decline:
    Py_INCREF(Py_None);
    result = Py_None;
done:
    PyBuffer_Release(&view);
    return result;
}

static PyObject *split_array(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t start, stop;
    if (!PyArg_ParseTuple(args, "y*nn", &view, &start, &stop)) return NULL;
    const unsigned char *buf = (const unsigned char *)view.buf;
    PyObject *out = NULL;
    if (start < 0 || stop > view.len || start > stop) goto malformed;
    out = PyList_New(0);
    if (out == NULL) goto done;
    Py_ssize_t at = start;
    while (at < stop) {
        if (at + 1 >= stop) goto malformed;  /* a type byte and nothing after it */
        const unsigned char *zero = memchr(buf + at + 1, 0, (size_t)(stop - at - 1));
        if (zero == NULL) goto malformed;
        Py_ssize_t doc = (zero - buf) + 1;
        if (doc + 4 > stop) goto malformed;
        Py_ssize_t len = (Py_ssize_t)rd_i32(buf + doc);
        if (len < 5 || len > stop - doc) goto malformed;
        PyObject *item = PyBytes_FromStringAndSize((const char *)buf + doc, len);
        if (item == NULL) goto fail;
        int err = PyList_Append(out, item);
        Py_DECREF(item);
        if (err < 0) goto fail;
        at = doc + len;
    }
    goto done;

malformed:
    PyErr_SetString(PyExc_ValueError, "malformed array of documents");
fail:
    Py_CLEAR(out);
done:
    PyBuffer_Release(&view);
    return out;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_O,
     "Offsets of a data change event's envelope fields in its raw BSON, or None."},
    {"split_array", split_array, METH_VARARGS,
     "The documents of a BSON array of documents, as bytes (see _fastevents.c)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastevents",
    "Change-event envelopes located in raw BSON (see _fastevents.c).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastevents(void) { return PyModule_Create(&module); }
