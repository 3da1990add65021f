/* copy_rows(): the Python entry of _copyrows.c. Parses a mapper's spec (paths as
 * tuples of bytes parts, column type codes), takes immutable copies of the argument
 * sequences, runs the batch through put_document, cuts the streams back for every
 * document left to Python, and returns (root, children, keys, left). The stream
 * buffers are kept between calls. */
#include "_copyrows.h"

/* --- arguments and streams -------------------------------------------------------- */

static int parse_path(PyObject *parts, Path *path) {
    if (!PyTuple_Check(parts) || PyTuple_GET_SIZE(parts) < 1 ||
        PyTuple_GET_SIZE(parts) > MAX_PARTS) {
        PyErr_SetString(PyExc_ValueError, "a path is a tuple of 1..16 bytes parts");
        return -1;
    }
    path->n = (int)PyTuple_GET_SIZE(parts);
    for (int i = 0; i < path->n; i++) {
        PyObject *part = PyTuple_GET_ITEM(parts, i);
        if (!PyBytes_Check(part)) {
            PyErr_SetString(PyExc_TypeError, "path parts must be bytes");
            return -1;
        }
        path->part[i] = PyBytes_AS_STRING(part);
        path->len[i] = (size_t)PyBytes_GET_SIZE(part);
    }
    return 0;
}

static int parse_lifts(PyObject *spec, Lift *lifts, int *n) {
    if (!PyTuple_Check(spec) || PyTuple_GET_SIZE(spec) > MAX_LIFTS) {
        PyErr_SetString(PyExc_ValueError, "lifts: a tuple of at most 64 (path, type)");
        return -1;
    }
    *n = (int)PyTuple_GET_SIZE(spec);
    for (int i = 0; i < *n; i++) {
        PyObject *item = PyTuple_GET_ITEM(spec, i);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
            PyErr_SetString(PyExc_ValueError, "a lift is (path, type)");
            return -1;
        }
        if (parse_path(PyTuple_GET_ITEM(item, 0), &lifts[i].path) < 0) return -1;
        long t = PyLong_AsLong(PyTuple_GET_ITEM(item, 1));
        if (t < 0 || t >= C_COUNT) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "bad type code");
            return -1;
        }
        lifts[i].type = (int)t;
    }
    return 0;
}

static int parse_spec(Spec *s, PyObject *lifts, PyObject *children) {
    s->doc_mode = lifts == Py_None;
    if (s->doc_mode) return 0;
    if (parse_lifts(lifts, s->lifts, &s->nlifts) < 0) return -1;
    if (!PyTuple_Check(children) || PyTuple_GET_SIZE(children) > MAX_CHILDREN) {
        PyErr_SetString(PyExc_ValueError, "children: a tuple of at most 16 (path, lifts)");
        return -1;
    }
    s->nchildren = (int)PyTuple_GET_SIZE(children);
    for (int i = 0; i < s->nchildren; i++) {
        PyObject *c = PyTuple_GET_ITEM(children, i);
        if (!PyTuple_Check(c) || PyTuple_GET_SIZE(c) != 2) {
            PyErr_SetString(PyExc_ValueError, "a child is (path, lifts)");
            return -1;
        }
        if (parse_path(PyTuple_GET_ITEM(c, 0), &s->children[i].path) < 0) return -1;
        if (parse_lifts(PyTuple_GET_ITEM(c, 1), s->children[i].lifts,
                        &s->children[i].nlifts) < 0)
            return -1;
    }
    return 0;
}

static int put_header(Out *o) {
    RESERVE(o, 19);
    put(o, "PGCOPY\n\377\r\n\0", 11);
    be32(o, 0);
    be32(o, 0);
    return ST_OK;
}

static PyObject *finish(Out *o) {
    if (out_grow(o, 2) != ST_OK) return PyErr_NoMemory();
    be16(o, -1);
    return PyBytes_FromStringAndSize(o->buf, (Py_ssize_t)o->len);
}

static PyObject *run(Spec *s, PyObject *raws, PyObject *versions, PyObject *streams,
                     PyObject *positions) {
    Py_ssize_t count = PySequence_Fast_GET_SIZE(raws);
    PyObject *keys = PyList_New(0), *left = PyList_New(0), *result = NULL;
    if (keys == NULL || left == NULL) goto done;
    if (put_header(s->root) != ST_OK) goto nomem;
    for (int i = 0; i < s->nchildren; i++)
        if (put_header(s->children[i].out) != ST_OK) goto nomem;
    for (Py_ssize_t i = 0; i < count; i++) {
        long long version = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(versions, i));
        if (version == -1 && PyErr_Occurred()) goto done;
        int stream = 0;
        long seq = 0;
        if (s->staging) {
            stream = PyObject_IsTrue(PySequence_Fast_GET_ITEM(streams, i));
            seq = PyLong_AsLong(PySequence_Fast_GET_ITEM(positions, i));
            if (stream < 0 || (seq == -1 && PyErr_Occurred())) goto done;
            if (seq < INT32_MIN || seq > INT32_MAX) {
                PyErr_SetString(PyExc_OverflowError, "a position does not fit int4");
                goto done;
            }
        }
        PyObject *raw = PySequence_Fast_GET_ITEM(raws, i);
        if (!PyBytes_Check(raw)) {
            PyErr_SetString(PyExc_TypeError, "raws must hold bytes");
            goto done;
        }
        size_t marks[1 + MAX_CHILDREN];
        marks[0] = s->root->len;
        for (int c = 0; c < s->nchildren; c++) marks[1 + c] = s->children[c].out->len;
        size_t key_at = 0, key_len = 0;
        int rc = put_document(s, (const uint8_t *)PyBytes_AS_STRING(raw),
                              (size_t)PyBytes_GET_SIZE(raw), version, stream,
                              (int32_t)seq, &key_at, &key_len);
        PyObject *item;
        if (rc == ST_OK) {
            item = PyBytes_FromStringAndSize(s->root->buf + key_at, (Py_ssize_t)key_len);
            if (item == NULL || PyList_Append(keys, item) < 0) {
                Py_XDECREF(item);
                goto done;
            }
        } else if (rc == ST_NOMEM) {
            goto nomem;
        } else {
            s->root->len = marks[0];
            for (int c = 0; c < s->nchildren; c++) s->children[c].out->len = marks[1 + c];
            item = PyLong_FromSsize_t(i);
            if (item == NULL || PyList_Append(left, item) < 0) {
                Py_XDECREF(item);
                goto done;
            }
        }
        Py_DECREF(item);
    }
    PyObject *root = finish(s->root);
    PyObject *kids = PyTuple_New(s->nchildren);
    if (root == NULL || kids == NULL) {
        Py_XDECREF(root);
        Py_XDECREF(kids);
        goto done;
    }
    for (int c = 0; c < s->nchildren; c++) {
        PyObject *b = finish(s->children[c].out);
        if (b == NULL) {
            Py_DECREF(root);
            Py_DECREF(kids);
            goto done;
        }
        PyTuple_SET_ITEM(kids, c, b);
    }
    result = Py_BuildValue("(NNOO)", root, kids, keys, left);
    goto done;
nomem:
    PyErr_NoMemory();
done:
    Py_XDECREF(keys);
    Py_XDECREF(left);
    return result;
}

#define KEEP_BYTES ((size_t)1 << 26)
static Out g_bufs[1 + MAX_CHILDREN];
static int g_busy = 0;

PyObject *copy_rows(PyObject *self, PyObject *args) {
    PyObject *raws, *versions, *streams, *positions, *lifts, *children;
    if (!PyArg_ParseTuple(args, "OOOOOO:copy_rows", &raws, &versions, &streams,
                          &positions, &lifts, &children))
        return NULL;
    Spec *s = PyMem_Calloc(1, sizeof(Spec));
    if (s == NULL) return PyErr_NoMemory();
    /* The shared buffers, unless a call is under way (Python code run by __index__ or
     * __bool__ of an argument could call back in): then buffers of its own. */
    Out local[1 + MAX_CHILDREN];
    memset(local, 0, sizeof local);
    Out *bufs = g_busy ? local : g_bufs;
    if (bufs == g_bufs) g_busy = 1;
    s->root = &bufs[0];
    for (int c = 0; c < MAX_CHILDREN; c++) s->children[c].out = &bufs[1 + c];
    PyObject *result = NULL;
    PyObject *r = NULL, *v = NULL, *st = NULL, *ps = NULL;
    if (parse_spec(s, lifts, children) < 0) goto done;
    s->staging = streams != Py_None;
    r = PySequence_Tuple(raws);
    v = PySequence_Tuple(versions);
    if (r == NULL || v == NULL) goto done;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(r);
    if (PySequence_Fast_GET_SIZE(v) != count) goto mismatch;
    if (s->staging) {
        st = PySequence_Tuple(streams);
        ps = PySequence_Tuple(positions);
        if (st == NULL || ps == NULL) goto done;
        if (PySequence_Fast_GET_SIZE(st) != count || PySequence_Fast_GET_SIZE(ps) != count)
            goto mismatch;
    }
    result = run(s, r, v, st, ps);
    goto done;
mismatch:
    PyErr_SetString(PyExc_ValueError, "raws, versions, streams, positions differ in length");
done:
    Py_XDECREF(r);
    Py_XDECREF(v);
    Py_XDECREF(st);
    Py_XDECREF(ps);
    for (int i = 0; i < 1 + MAX_CHILDREN; i++) {
        /* Keep the shared buffers (no page faults next batch) unless huge. */
        if (bufs != g_bufs || bufs[i].cap > KEEP_BYTES) {
            PyMem_Free(bufs[i].buf);
            bufs[i].buf = NULL;
            bufs[i].cap = 0;
        }
        bufs[i].len = 0;
    }
    if (bufs == g_bufs) g_busy = 0;
    PyMem_Free(s);
    return result;
}
