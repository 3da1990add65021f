/* Relaxed Extended JSON v2 straight from raw BSON bytes, for document mode.
 *
 * relaxed(raw) walks the BSON document once and writes the text the pure-Python
 * path of cdc/mapping/ejson.py writes for it (bson.decode, then msgspec.json.encode
 * of to_ejson(..., canonical=False)): same key order, same number formatting, same
 * wrappers and deviations. It returns the document-mode row (key, id_text, id_bson,
 * text): id_bson is the top-level _id element cut out as {"_id": value}, key and
 * id_text (keys.py's _key and document.py's _id text) are filled in for an ObjectId
 * _id and None otherwise. It returns None when the document holds anything this
 * module leaves to the Python path:
 *
 *   - a field name starting with '$' (type wrappers, DBRef, ambiguity checks);
 *   - a field name that occurs twice in one document (bson keeps the last value);
 *   - array element names other than "0", "1", ... (bson ignores them);
 *   - a string containing U+0000 (the Python path raises MappingError);
 *   - Decimal128, code, code with scope, symbol, DBPointer, undefined, binData
 *     subtype 2 (old binary), nesting deeper than MAX_DEPTH, no top-level _id.
 *
 * Malformed BSON (a length that does not fit, a missing terminator, invalid UTF-8,
 * a bool other than 0/1, an unknown type) raises ValueError; callers then let
 * bson.decode give the verdict, so malformed input always ends as MappingError
 * exactly as on the Python path. Every length is checked against the bytes that
 * remain before it is used; nothing is read past the buffer.
 *
 * copy_rows() (in _copyrows.c) builds whole binary COPY streams from a batch of raw
 * documents with the same writer (see there).
 *
 * Doubles: the Python path lets msgspec write finite doubles of magnitude < 1e16
 * (shortest round-trip digits, msgspec's layout: "1.5", "100.0", "1e-7",
 * "0.00001") and wraps the others in {"$numberDouble": repr(x)}. Shortest digits
 * come from an exact check (m / 10**s == x for the smallest s, unique candidate)
 * and otherwise from PyOS_double_to_string(x, 'r'), CPython's repr.
 */
#include "_ejson.h"

PyObject *copy_rows(PyObject *self, PyObject *args); /* _copyrows.c */

/* One output buffer reused across calls: the GIL is held throughout and no Python
 * code runs while it is in use. */
static Out g_out = {NULL, 0, 0, 1};

/* --- module -------------------------------------------------------------------- */

/* The document-mode key columns that need no decoding: (_key, _id text) of an
 * ObjectId _id, else (None, None); and _id_bson, the element as {"_id": value}. */
static PyObject *key_columns(const uint8_t *raw, IdSpan id, PyObject *text) {
    size_t elen = (size_t)(id.end - id.start);
    const uint8_t *elem = raw + id.start;
    PyObject *id_bson = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)elen + 5);
    if (id_bson == NULL) {
        Py_DECREF(text);
        return NULL;
    }
    uint8_t *b = (uint8_t *)PyBytes_AS_STRING(id_bson);
    uint32_t total = (uint32_t)elen + 5;
    b[0] = (uint8_t)total;
    b[1] = (uint8_t)(total >> 8);
    b[2] = (uint8_t)(total >> 16);
    b[3] = (uint8_t)(total >> 24);
    memcpy(b + 4, elem, elen);
    b[4 + elen] = 0;
    PyObject *key, *id_text;
    if (elem[0] == 0x07) { /* ObjectId: its 12 bytes end the element */
        const uint8_t *oid = elem + elen - 12;
        key = PyBytes_FromStringAndSize(NULL, 13);
        id_text = PyUnicode_New(24, 127);
        if (key == NULL || id_text == NULL) {
            Py_XDECREF(key);
            Py_XDECREF(id_text);
            Py_DECREF(id_bson);
            Py_DECREF(text);
            return NULL;
        }
        char *k = PyBytes_AS_STRING(key);
        k[0] = 0x23; /* keys.py T_OBJECTID */
        memcpy(k + 1, oid, 12);
        Py_UCS1 *h = PyUnicode_1BYTE_DATA(id_text);
        for (int i = 0; i < 12; i++) {
            h[2 * i] = (Py_UCS1)HEXDIGITS[oid[i] >> 4];
            h[2 * i + 1] = (Py_UCS1)HEXDIGITS[oid[i] & 15];
        }
    } else {
        key = Py_NewRef(Py_None);
        id_text = Py_NewRef(Py_None);
    }
    PyObject *row = PyTuple_New(4);
    if (row == NULL) {
        Py_DECREF(key);
        Py_DECREF(id_text);
        Py_DECREF(id_bson);
        Py_DECREF(text);
        return NULL;
    }
    PyTuple_SET_ITEM(row, 0, key);
    PyTuple_SET_ITEM(row, 1, id_text);
    PyTuple_SET_ITEM(row, 2, id_bson);
    PyTuple_SET_ITEM(row, 3, text);
    return row;
}

static PyObject *relaxed(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    const uint8_t *raw = view.buf;
    size_t n = (size_t)view.len;
    Out *o = &g_out;
    o->len = 0;
    o->ascii = 1;
    IdSpan id = {-1, -1};
    int rc;
    if (n < 5 || (size_t)rd_i32(raw) != n || rd_i32(raw) < 5) {
        rc = ST_MALFORMED;
    } else {
        rc = write_doc(o, raw, raw, n, 0, 0, &id, NULL);
    }
    PyObject *result = NULL;
    if (rc == ST_OK && id.start < 0) rc = ST_UNHANDLED; /* no _id: Python path raises */
    if (rc == ST_OK) {
        PyObject *text;
        if (o->ascii) {
            text = PyUnicode_New((Py_ssize_t)o->len, 127);
            if (text != NULL) memcpy(PyUnicode_1BYTE_DATA(text), o->buf, o->len);
        } else {
            text = PyUnicode_DecodeUTF8(o->buf, (Py_ssize_t)o->len, "strict");
        }
        if (text != NULL) result = key_columns(raw, id, text);
    } else if (rc == ST_UNHANDLED) {
        result = Py_NewRef(Py_None);
    } else if (rc == ST_MALFORMED) {
        PyErr_SetString(PyExc_ValueError, "malformed BSON document");
    } else {
        PyErr_NoMemory();
    }
    PyBuffer_Release(&view);
    if (o->cap > (1u << 22)) { /* do not keep a huge buffer after a huge document */
        PyMem_Free(o->buf);
        o->buf = NULL;
        o->cap = 0;
    }
    return result;
}

/* Test seam: give the output buffer exactly n bytes, so tests can make every write
 * land on a buffer boundary (run under AddressSanitizer to catch an overrun). */
static PyObject *set_buffer_capacity(PyObject *self, PyObject *arg) {
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n < 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "capacity must be >= 0");
        return NULL;
    }
    char *buf = n ? PyMem_Malloc((size_t)n) : NULL;
    if (n && buf == NULL) return PyErr_NoMemory();
    PyMem_Free(g_out.buf);
    g_out.buf = buf;
    g_out.cap = (size_t)n;
    g_out.len = 0;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"_set_buffer_capacity", set_buffer_capacity, METH_O,
     "_set_buffer_capacity(n) -> None (tests only): output buffer of exactly n bytes."},
    {"copy_rows", copy_rows, METH_VARARGS,
     "copy_rows(raws, versions, streams, positions, lifts, children)\n"
     "    -> (root, children, keys, left)\n\n"
     "Binary COPY streams of a batch of raw BSON documents (see _copyrows.c)."},
    {"relaxed", relaxed, METH_O,
     "relaxed(raw) -> (key, id_text, id_bson, text) | None\n\n"
     "Document-mode row of a raw BSON document with its relaxed Extended JSON (key and\n"
     "id_text None unless _id is an ObjectId), or None for what only the Python path\n"
     "writes. Raises ValueError for malformed BSON."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastejson",
    "Relaxed Extended JSON straight from raw BSON (see _fastejson.c).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastejson(void) {
    init_tables();
    return PyModule_Create(&module);
}
