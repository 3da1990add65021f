/* Binary COPY streams straight from a batch of raw BSON documents.
 *
 * copy_rows(raws, versions, streams, positions, lifts, children) writes one complete
 * PostgreSQL binary COPY stream per table (header "PGCOPY\n\377\r\n\0", flags 0,
 * extension 0; per tuple an int16 field count and per field an int32 length, -1 for
 * NULL, and the bytes; trailer int16 -1) holding the rows the Python mappers
 * (document.py, columns.py) give, field for field, plus _m2p_version int8 and, when
 * streams/positions are given, _m2p_stream bool and _m2p_seq int4 on root rows.
 *
 * lifts is None for document mode (the doc column is the whole document as relaxed
 * Extended JSON, _fastejson.c's text). Otherwise column mode: lifts is a tuple of
 * (path parts as bytes, type code) for the root's typed columns and children a tuple
 * of (path parts, lifts) per child table. Lifted values are found first (the address
 * of their element), then the rest is written by the relaxed writer with those
 * elements in a Skip set; a child array is written element by element into its own
 * stream.
 *
 * A document is written only when this is certain to equal the Python result; any
 * other document is written to no stream and its index goes to `left`: what the
 * writer leaves to Python or finds malformed, an _id other than ObjectId, int32,
 * int64 or a string without U+0000, a typed value the column's converter
 * (convert.py) rejects. Every stream is cut back to where the document started.
 */
#include "_copyrows.h"

#define TRY(x)                          \
    do {                                \
        int rc__ = (x);                 \
        if (rc__ != ST_OK) return rc__; \
    } while (0)

/* --- binary COPY fields ---------------------------------------------------------- */

static inline void be64(Out *o, int64_t v) {
    uint64_t u = (uint64_t)v;
    for (int s = 56; s >= 0; s -= 8) o->buf[o->len++] = (char)(u >> s);
}

static inline void patch32(Out *o, size_t at, size_t v) {
    uint32_t u = (uint32_t)v;
    for (int i = 0; i < 4; i++) o->buf[at + (size_t)i] = (char)(u >> (24 - 8 * i));
}

static int field_null(Out *o) {
    RESERVE(o, 4);
    be32(o, -1);
    return ST_OK;
}

static int field_bytes(Out *o, const void *p, size_t n) {
    if (n > INT32_MAX) return ST_UNHANDLED;
    RESERVE(o, 4 + n);
    be32(o, (int32_t)n);
    put(o, (const char *)p, n);
    return ST_OK;
}

static int field_i64(Out *o, int64_t v) {
    RESERVE(o, 12);
    be32(o, 8);
    be64(o, v);
    return ST_OK;
}

static int field_i32(Out *o, int32_t v) {
    RESERVE(o, 8);
    be32(o, 4);
    be32(o, v);
    return ST_OK;
}

static int field_hex(Out *o, const uint8_t *v, size_t n) {
    RESERVE(o, 4 + 2 * n);
    be32(o, (int32_t)(2 * n));
    for (size_t i = 0; i < n; i++) {
        o->buf[o->len++] = HEXDIGITS[v[i] >> 4];
        o->buf[o->len++] = HEXDIGITS[v[i] & 15];
    }
    return ST_OK;
}

/* Valid UTF-8 without U+0000: what PostgreSQL's text takes and bson decodes alike. */
static int clean_text(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        if (s[i] < 0x80) {
            if (s[i] == 0) return 0;
            i++;
            continue;
        }
        size_t k = utf8_seq(s + i, n - i);
        if (k == 0) return 0;
        i += k;
    }
    return 1;
}

/* --- _key and _id text ------------------------------------------------------------ */

/* keys.py's number body (after T_NUMBER) of a non-zero integer: class byte, adjusted
 * exponent + 0x8000 (uint16 BE), digit pairs 1 + 10a + b, 0x00; inverted if < 0. */
static int put_int_key(Out *o, int64_t v) {
    RESERVE(o, 32);
    o->buf[o->len++] = 0x0A;
    if (v == 0) {
        o->buf[o->len++] = 0x03;
        return ST_OK;
    }
    int neg = v < 0;
    uint64_t m = neg ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    char d[24];
    int n = 0;
    while (m) {
        d[n++] = (char)(m % 10);
        m /= 10;
    } /* d holds the digits, least significant first */
    int adjusted = n, low = 0;
    while (d[low] == 0) low++; /* trailing zeros are not stored */
    uint8_t body[16];
    int k = 0;
    body[k++] = (uint8_t)((adjusted + 0x8000) >> 8);
    body[k++] = (uint8_t)(adjusted + 0x8000);
    for (int i = n - 1; i >= low; i -= 2) {
        int a = d[i], b = (i - 1 >= low) ? d[i - 1] : 0;
        body[k++] = (uint8_t)(1 + a * 10 + b);
    }
    body[k++] = 0;
    o->buf[o->len++] = neg ? 0x02 : 0x04;
    for (int i = 0; i < k; i++) o->buf[o->len++] = (char)(neg ? 0xFF - body[i] : body[i]);
    return ST_OK;
}

/* The _key, _id and _id_bson fields of the _id element at elem (value at val, vsize
 * bytes); key_at and key_len locate the _key bytes in o. */
static int put_id(Out *o, const uint8_t *elem, const uint8_t *val, size_t vsize,
                  size_t *key_at, size_t *key_len) {
    uint8_t type = elem[0];
    size_t start = o->len;
    RESERVE(o, 4);
    o->len += 4;
    *key_at = o->len;
    char num[24];
    size_t nnum = 0;
    if (type == 0x07) {
        RESERVE(o, 13);
        o->buf[o->len++] = 0x23;
        put(o, (const char *)val, 12);
    } else if (type == 0x10 || type == 0x12) {
        int64_t v = type == 0x10 ? rd_i32(val) : rd_i64(val);
        TRY(put_int_key(o, v));
        nnum = (size_t)snprintf(num, sizeof num, "%lld", (long long)v);
    } else if (type == 0x02) {
        size_t n = vsize - 5;
        if (!clean_text(val + 4, n)) return ST_UNHANDLED;
        RESERVE(o, n + 3);
        o->buf[o->len++] = 0x0F;
        put(o, (const char *)val + 4, n);
        o->buf[o->len++] = 0;
        o->buf[o->len++] = 0;
    } else {
        return ST_UNHANDLED;
    }
    *key_len = o->len - *key_at;
    patch32(o, start, *key_len);
    if (type == 0x07) TRY(field_hex(o, val, 12));
    else if (type == 0x02) TRY(field_bytes(o, val + 4, vsize - 5));
    else TRY(field_bytes(o, num, nnum));
    size_t elen = (size_t)(val + vsize - elem);
    RESERVE(o, elen + 9);
    be32(o, (int32_t)(elen + 5));
    uint32_t total = (uint32_t)(elen + 5);
    for (int i = 0; i < 4; i++) o->buf[o->len++] = (char)(total >> (8 * i));
    put(o, (const char *)elem, elen);
    o->buf[o->len++] = 0;
    return ST_OK;
}

/* --- finding values --------------------------------------------------------------- */

typedef struct {
    const uint8_t *elem; /* NULL: absent */
    const uint8_t *val;
    size_t size;
} Found;

/* First element named name[0:n] of the document at p (size bytes, checked). */
static int find(const uint8_t *p, size_t size, const char *name, size_t n, Found *f) {
    size_t pos = 4, end = size - 1;
    f->elem = NULL;
    while (pos < end) {
        const uint8_t *nm = p + pos + 1;
        const uint8_t *nul = memchr(nm, 0, end - pos - 1);
        if (nul == NULL) return ST_MALFORMED;
        size_t nn = (size_t)(nul - nm), v = pos + 2 + nn, vs;
        TRY(value_size(p[pos], p + v, end - v, &vs));
        if (nn == n && memcmp(nm, name, n) == 0) {
            f->elem = p + pos;
            f->val = p + v;
            f->size = vs;
            return ST_OK;
        }
        pos = v + vs;
    }
    return ST_OK;
}

/* The element at a dotted path; absent when a part is missing or a parent on the
 * way is not a document (columns.py). */
static int lookup(const uint8_t *p, size_t size, const Path *path, Found *f) {
    f->elem = NULL;
    for (int i = 0; i < path->n; i++) {
        TRY(find(p, size, path->part[i], path->len[i], f));
        if (f->elem == NULL || i == path->n - 1) return ST_OK;
        if (f->elem[0] != 0x03) {
            f->elem = NULL;
            return ST_OK;
        }
        p = f->val;
        size = f->size;
    }
    return ST_OK;
}

/* The typed field of a lifted value per convert.py: an absent value or an explicit
 * null is NULL and stays in the rest; anything the converter rejects is left to
 * Python. *lifted tells whether the element leaves the rest. */
static int put_typed(Out *o, int ctype, const Found *f, int *lifted) {
    *lifted = 0;
    if (f->elem == NULL || f->elem[0] == 0x0A) return field_null(o);
    uint8_t t = f->elem[0];
    const uint8_t *v = f->val;
    *lifted = 1;
    switch (ctype) {
    case C_TEXT:
        if (t != 0x02 || !clean_text(v + 4, f->size - 5)) return ST_UNHANDLED;
        return field_bytes(o, v + 4, f->size - 5);
    case C_OBJECTID:
        if (t != 0x07) return ST_UNHANDLED;
        return field_hex(o, v, 12);
    case C_BIGINT:
        if (t == 0x10) return field_i64(o, rd_i32(v));
        if (t == 0x12) return field_i64(o, rd_i64(v));
        return ST_UNHANDLED;
    case C_INTEGER:
        if (t == 0x10) return field_i32(o, rd_i32(v));
        if (t == 0x12 && rd_i64(v) >= INT32_MIN && rd_i64(v) <= INT32_MAX)
            return field_i32(o, (int32_t)rd_i64(v));
        return ST_UNHANDLED;
    case C_DOUBLE:
        if (t != 0x01) return ST_UNHANDLED;
        return field_i64(o, rd_i64(v));
    case C_BOOLEAN:
        if (t != 0x08 || v[0] > 1) return ST_UNHANDLED;
        return field_bytes(o, v, 1);
    case C_TIMESTAMPTZ: {
        if (t != 0x09) return ST_UNHANDLED;
        int64_t ms = rd_i64(v);
        if (ms < MIN_MS || ms > MAX_MS) return ST_UNHANDLED;
        /* asyncpg writes 0001-01-01T00:00:00Z (datetime.min) as -infinity: so do we,
         * and it reads -infinity back as datetime.min, the same date. */
        if (ms == MIN_MS) return field_i64(o, INT64_MIN);
        return field_i64(o, ms * 1000 - PG_EPOCH_US);
    }
    case C_UUID:
        if (t != 0x05 || rd_i32(v) != 16 || (v[4] != 3 && v[4] != 4)) return ST_UNHANDLED;
        return field_bytes(o, v + 5, 16);
    case C_BYTEA:
        if (t != 0x05 || v[4] != 0) return ST_UNHANDLED;
        return field_bytes(o, v + 5, f->size - 5);
    default:
        return ST_UNHANDLED;
    }
}

/* Typed fields of lifts from the document at p; lifted elements added to skip. */
static int put_lifts(Out *o, const uint8_t *p, size_t size, const Lift *lifts, int n,
                     const uint8_t **skip, size_t *nskip) {
    for (int i = 0; i < n; i++) {
        Found f;
        int lifted;
        TRY(lookup(p, size, &lifts[i].path, &f));
        TRY(put_typed(o, lifts[i].type, &f, &lifted));
        if (lifted) skip[(*nskip)++] = f.elem;
    }
    return ST_OK;
}

/* A jsonb field (version byte 1, then the text) written by fn. */
#define JSONB_FIELD(o, call)                         \
    do {                                             \
        RESERVE((o), 5);                             \
        size_t at_ = (o)->len;                       \
        (o)->len += 4;                               \
        (o)->buf[(o)->len++] = 1;                    \
        TRY(call);                                   \
        if ((o)->len - at_ - 4 > INT32_MAX) return ST_UNHANDLED; \
        patch32((o), at_, (o)->len - at_ - 4);       \
    } while (0)

static int put_version(Out *o, int64_t version, int staging, int stream, int32_t seq) {
    TRY(field_i64(o, version));
    if (staging) {
        uint8_t b = stream ? 1 : 0;
        TRY(field_bytes(o, &b, 1));
        TRY(field_i32(o, seq));
    }
    return ST_OK;
}

/* Rows of one child table for the document at p: one per element of a non-empty
 * array at the child's path (the array then leaves the rest). */
static int put_child(Child *c, const uint8_t *p, size_t size, const Out *root,
                     size_t key_at, size_t key_len, int64_t version,
                     const uint8_t **skip, size_t *nskip) {
    Found f;
    TRY(lookup(p, size, &c->path, &f));
    if (f.elem == NULL || f.elem[0] != 0x04 || f.size <= 5) return ST_OK;
    skip[(*nskip)++] = f.elem;
    Out *o = c->out;
    const uint8_t *a = f.val;
    size_t pos = 4, end = f.size - 1, index = 0;
    int depth = c->path.n + 1;
    const uint8_t *eskip[MAX_LIFTS];
    while (pos < end) {
        uint8_t t = a[pos];
        const uint8_t *nm = a + pos + 1;
        const uint8_t *nul = memchr(nm, 0, end - pos - 1);
        if (nul == NULL) return ST_MALFORMED;
        size_t nn = (size_t)(nul - nm), v = pos + 2 + nn, vs;
        char want[24];
        int nw = snprintf(want, sizeof want, "%zu", index);
        if ((size_t)nw != nn || memcmp(nm, want, nn) != 0) return ST_UNHANDLED;
        TRY(value_size(t, a + v, end - v, &vs));
        if (index > INT32_MAX) return ST_UNHANDLED;
        RESERVE(o, 2);
        be16(o, (int16_t)(c->nlifts + 4));
        TRY(field_bytes(o, root->buf + key_at, key_len));
        TRY(field_i32(o, (int32_t)index));
        if (t == 0x03) {
            size_t ne = 0;
            TRY(put_lifts(o, a + v, vs, c->lifts, c->nlifts, eskip, &ne));
            Skip sk = {eskip, ne};
            JSONB_FIELD(o, write_doc(o, a + v, a + v, vs, 0, depth, NULL, &sk));
        } else {
            for (int i = 0; i < c->nlifts; i++) TRY(field_null(o));
            size_t ws;
            JSONB_FIELD(o, write_value(o, a + v, t, a + v, vs, depth, NULL, &ws));
        }
        TRY(put_version(o, version, 0, 0, 0));
        pos = v + vs;
        index++;
    }
    return ST_OK;
}

/* All rows of one document, appended to the spec's streams. */
int put_document(Spec *s, const uint8_t *raw, size_t n, int64_t version,
                        int stream, int32_t seq, size_t *key_at, size_t *key_len) {
    if (n < 5 || (size_t)rd_i32(raw) != n || raw[n - 1] != 0) return ST_MALFORMED;
    Found id;
    TRY(find(raw, n, "_id", 3, &id));
    if (id.elem == NULL) return ST_UNHANDLED;
    Out *o = s->root;
    RESERVE(o, 2);
    be16(o, (int16_t)(3 + s->nlifts + 1 + 1 + (s->staging ? 2 : 0)));
    TRY(put_id(o, id.elem, id.val, id.size, key_at, key_len));
    if (s->doc_mode) {
        JSONB_FIELD(o, write_doc(o, raw, raw, n, 0, 0, NULL, NULL));
    } else {
        const uint8_t *skip[1 + MAX_LIFTS + MAX_CHILDREN];
        size_t nskip = 0;
        skip[nskip++] = id.elem;
        TRY(put_lifts(o, raw, n, s->lifts, s->nlifts, skip, &nskip));
        for (int i = 0; i < s->nchildren; i++)
            TRY(put_child(&s->children[i], raw, n, o, *key_at, *key_len, version, skip,
                          &nskip));
        Skip sk = {skip, nskip};
        JSONB_FIELD(o, write_doc(o, raw, raw, n, 0, 0, NULL, &sk));
    }
    return put_version(o, version, s->staging, stream, seq);
}

