/* Relaxed Extended JSON of BSON documents and arrays (see _fastejson.c for the
 * contract): field names checked for '$' and duplicates, array element names checked
 * to be "0", "1", ..., every value dispatched to the scalar writers of _ejson_text.c.
 * A Skip set leaves chosen elements out (column mode's rest) while their names still
 * take part in the duplicate check. */
#include "_ejson.h"

/* Length of the field name at name (its NUL within room bytes; room if none), and
 * whether all its bytes are plain ASCII. Eight bytes at a time on little-endian
 * machines: the first flagged byte of a word is the NUL or a byte that needs care. */
static inline size_t name_length(const uint8_t *name, size_t room, int *plain) {
    size_t i = 0;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    while (i + 8 <= room) {
        uint64_t v;
        memcpy(&v, name + i, 8);
        uint64_t care = care_mask(v);
        if (care == 0) {
            i += 8;
            continue;
        }
        size_t first = i + ((size_t)__builtin_ctzll(care) >> 3);
        if (name[first] == 0) {
            *plain = 1;
            return first;
        }
        break;
    }
#endif
    int all = 1;
    while (i < room && name[i] != 0) all &= PLAIN[name[i++]];
    *plain = all;
    return i;
}


/* --- duplicate field names ------------------------------------------------------ */

typedef struct {
    const uint8_t *k;
    size_t n;
    uint64_t fp; /* length and three bytes: most different names differ here */
} Key;

typedef struct {
    Key small[SMALL_KEYS];
    size_t count;
    Key *table; /* open addressing, once count exceeds SMALL_KEYS */
    size_t cap;
} KeySet;

static inline uint64_t key_hash(const uint8_t *k, size_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ k[i]) * 1099511628211ULL;
    return h;
}

static inline uint64_t key_fp(const uint8_t *k, size_t n) {
    if (n == 0) return 0;
    return (uint64_t)n | ((uint64_t)k[0] << 32) | ((uint64_t)k[n / 2] << 40) |
           ((uint64_t)k[n - 1] << 48);
}

static int table_insert(Key *table, size_t cap, const uint8_t *k, size_t n) {
    size_t i = (size_t)key_hash(k, n) & (cap - 1);
    while (table[i].k != NULL) {
        if (table[i].n == n && memcmp(table[i].k, k, n) == 0) return 1;
        i = (i + 1) & (cap - 1);
    }
    table[i].k = k;
    table[i].n = n;
    table[i].fp = 0;
    return 0;
}

/* 0: new name; 1: seen before; ST_NOMEM as -1. */
static int keyset_add(KeySet *ks, const uint8_t *k, size_t n) {
    if (ks->table == NULL) {
        uint64_t fp = key_fp(k, n);
        for (size_t i = 0; i < ks->count; i++)
            if (ks->small[i].fp == fp && memcmp(ks->small[i].k, k, n) == 0) return 1;
        if (ks->count < SMALL_KEYS) {
            ks->small[ks->count].k = k;
            ks->small[ks->count].n = n;
            ks->small[ks->count].fp = fp;
            ks->count++;
            return 0;
        }
        ks->cap = 4 * SMALL_KEYS;
        ks->table = PyMem_Calloc(ks->cap, sizeof(Key));
        if (ks->table == NULL) return -1;
        for (size_t i = 0; i < ks->count; i++)
            table_insert(ks->table, ks->cap, ks->small[i].k, ks->small[i].n);
    }
    if (2 * (ks->count + 1) > ks->cap) {
        size_t cap = ks->cap * 2;
        Key *table = PyMem_Calloc(cap, sizeof(Key));
        if (table == NULL) return -1;
        for (size_t i = 0; i < ks->cap; i++)
            if (ks->table[i].k != NULL)
                table_insert(table, cap, ks->table[i].k, ks->table[i].n);
        PyMem_Free(ks->table);
        ks->table = table;
        ks->cap = cap;
    }
    if (table_insert(ks->table, ks->cap, k, n)) return 1;
    ks->count++;
    return 0;
}

/* --- documents ----------------------------------------------------------------- */

/* Whether name[0:n] is the decimal text of index. */
static inline int is_index_name(const uint8_t *name, size_t n, size_t index) {
    if (index < 10) return n == 1 && name[0] == '0' + index;
    char tmp[24];
    int i = 24;
    do {
        tmp[--i] = (char)('0' + index % 10);
        index /= 10;
    } while (index);
    return n == (size_t)(24 - i) && memcmp(name, tmp + i, n) == 0;
}

static inline int skipped(const Skip *skip, const uint8_t *elem) {
    for (size_t i = 0; i < skip->n; i++)
        if (skip->at[i] == elem) return 1;
    return 0;
}

/* Size of the value of any BSON type at val, with left bytes available; checks only
 * the bounds (the value's content is checked by whoever reads it). */
int value_size(uint8_t type, const uint8_t *val, size_t left, size_t *vsize) {
    size_t n;
    switch (type) {
    case 0x06: case 0x0A: case 0x7F: case 0xFF: n = 0; break;
    case 0x08: n = 1; break;
    case 0x10: n = 4; break;
    case 0x01: case 0x09: case 0x11: case 0x12: n = 8; break;
    case 0x07: n = 12; break;
    case 0x13: n = 16; break;
    case 0x02: case 0x0D: case 0x0E: case 0x0C: {
        if (left < 4) return ST_MALFORMED;
        int32_t k = rd_i32(val);
        if (k < 1 || (size_t)k > left - 4 || val[4 + k - 1] != 0) return ST_MALFORMED;
        n = 4 + (size_t)k + (type == 0x0C ? 12 : 0);
        break;
    }
    case 0x03: case 0x04: case 0x0F: {
        if (left < 5) return ST_MALFORMED;
        int32_t k = rd_i32(val);
        if (k < 5 || (size_t)k > left || val[k - 1] != 0) return ST_MALFORMED;
        n = (size_t)k;
        break;
    }
    case 0x05: {
        if (left < 5) return ST_MALFORMED;
        int32_t k = rd_i32(val);
        if (k < 0 || (size_t)k > left - 5) return ST_MALFORMED;
        n = 5 + (size_t)k;
        break;
    }
    case 0x0B: {
        const uint8_t *pend = memchr(val, 0, left);
        if (pend == NULL) return ST_MALFORMED;
        const uint8_t *oend = memchr(pend + 1, 0, left - (size_t)(pend - val) - 1);
        if (oend == NULL) return ST_MALFORMED;
        n = (size_t)(oend - val) + 1;
        break;
    }
    default:
        return ST_MALFORMED;
    }
    if (n > left) return ST_MALFORMED;
    *vsize = n;
    return ST_OK;
}

/* Write one value of type `type` at val (left bytes available); its size goes to
 * *vsize. Documents and arrays at val are at nesting level depth. */
int write_value(Out *o, const uint8_t *base, uint8_t type, const uint8_t *val, size_t left,
                int depth, const Skip *skip, size_t *vsize) {
    int rc;
    switch (type) {
    case 0x01: { /* double */
        if (left < 8) return ST_MALFORMED;
        double x;
        uint64_t bits = (uint64_t)rd_i64(val);
        memcpy(&x, &bits, 8);
        *vsize = 8;
        return write_double(o, x);
    }
    case 0x02: { /* string */
        if (left < 4) return ST_MALFORMED;
        int32_t n = rd_i32(val);
        if (n < 1 || (size_t)n > left - 4 || val[4 + n - 1] != 0) return ST_MALFORMED;
        if (memchr(val + 4, 0, (size_t)n - 1) != NULL) return ST_UNHANDLED;
        *vsize = 4 + (size_t)n;
        return write_string(o, val + 4, (size_t)n - 1);
    }
    case 0x03: /* document */
    case 0x04: /* array */
        if (left < 5) return ST_MALFORMED;
        if (depth > MAX_DEPTH) return ST_UNHANDLED;
        rc = write_doc(o, base, val, left, type == 0x04, depth, NULL, skip);
        *vsize = (size_t)rd_i32(val); /* checked by write_doc */
        return rc;
    case 0x05: { /* binary */
        if (left < 5) return ST_MALFORMED;
        int32_t n = rd_i32(val);
        if (n < 0 || (size_t)n > left - 5) return ST_MALFORMED;
        if (val[4] == 0x02) return ST_UNHANDLED;
        *vsize = 5 + (size_t)n;
        return write_binary(o, val + 5, (size_t)n, val[4]);
    }
    case 0x07: /* ObjectId */
        if (left < 12) return ST_MALFORMED;
        *vsize = 12;
        return write_oid(o, val);
    case 0x08: /* bool */
        if (left < 1) return ST_MALFORMED;
        if (val[0] > 1) return ST_MALFORMED;
        RESERVE(o, 5);
        if (val[0]) PUTLIT(o, "true");
        else PUTLIT(o, "false");
        *vsize = 1;
        return ST_OK;
    case 0x09: /* UTC datetime */
        if (left < 8) return ST_MALFORMED;
        *vsize = 8;
        return write_date(o, rd_i64(val));
    case 0x0A: /* null */
        RESERVE(o, 4);
        PUTLIT(o, "null");
        *vsize = 0;
        return ST_OK;
    case 0x0B: { /* regex: two cstrings */
        const uint8_t *pend = memchr(val, 0, left);
        if (pend == NULL) return ST_MALFORMED;
        size_t np = (size_t)(pend - val);
        const uint8_t *opt = pend + 1;
        const uint8_t *oend = memchr(opt, 0, left - np - 1);
        if (oend == NULL) return ST_MALFORMED;
        size_t nopt = (size_t)(oend - opt);
        *vsize = np + nopt + 2;
        return write_regex(o, val, np, opt, nopt);
    }
    case 0x10: /* int32 */
        if (left < 4) return ST_MALFORMED;
        *vsize = 4;
        return write_i64(o, rd_i32(val));
    case 0x11: /* timestamp: increment, then seconds */
        if (left < 8) return ST_MALFORMED;
        RESERVE(o, 64); /* {"$timestamp":{"t":4294967295,"i":4294967295}} is 46 */
        PUTLIT(o, "{\"$timestamp\":{\"t\":");
        write_u64(o, rd_u32(val + 4));
        PUTLIT(o, ",\"i\":");
        write_u64(o, rd_u32(val));
        PUTLIT(o, "}}");
        *vsize = 8;
        return ST_OK;
    case 0x12: /* int64 */
        if (left < 8) return ST_MALFORMED;
        *vsize = 8;
        return write_i64(o, rd_i64(val));
    case 0xFF: /* MinKey */
        RESERVE(o, 16);
        PUTLIT(o, "{\"$minKey\":1}");
        *vsize = 0;
        return ST_OK;
    case 0x7F: /* MaxKey */
        RESERVE(o, 16);
        PUTLIT(o, "{\"$maxKey\":1}");
        *vsize = 0;
        return ST_OK;
    case 0x06: /* undefined */
    case 0x0C: /* DBPointer */
    case 0x0D: /* code */
    case 0x0E: /* symbol */
    case 0x0F: /* code with scope */
    case 0x13: /* Decimal128 */
        return ST_UNHANDLED;
    default:
        return ST_MALFORMED;
    }
}

static int write_elements(Out *o, const uint8_t *base, const uint8_t *p, size_t size,
                          int is_array, int depth, IdSpan *id, KeySet *ks,
                          const Skip *skip) {
    size_t pos = 4, end = size - 1; /* elements live in p[4:size-1]; p[size-1] == 0 */
    size_t index = 0, written = 0;
    while (pos < end) {
        uint8_t type = p[pos];
        size_t elem = pos;
        const uint8_t *name = p + pos + 1;
        /* Field names are short: find the end by hand, noting whether every byte is
         * plain ASCII (then the name is copied as is, no escaping or UTF-8 check). */
        size_t room = end - (pos + 1);
        int plain;
        size_t nname = name_length(name, room, &plain);
        if (nname == room) return ST_MALFORMED;
        size_t v = pos + 2 + nname;  /* value offset in p */
        size_t left = end - v;       /* bytes the value may use */
        const uint8_t *val = p + v;
        size_t vsize;
        int rc;

        if (is_array) {
            if (!is_index_name(name, nname, index)) return ST_UNHANDLED;
        } else {
            if (nname > 0 && name[0] == '$') return ST_UNHANDLED;
            int dup = keyset_add(ks, name, nname);
            if (dup < 0) return ST_NOMEM;
            if (dup) return ST_UNHANDLED;
            if (skip != NULL && skipped(skip, p + elem)) {
                rc = value_size(type, val, left, &vsize);
                if (rc != ST_OK) return rc;
                pos = v + vsize;
                index++;
                continue;
            }
        }
        RESERVE(o, 1);
        if (written > 0) o->buf[o->len++] = ',';
        if (!is_array) {
            if (plain) {
                RESERVE(o, nname + 3);
                o->buf[o->len++] = '"';
                put(o, (const char *)name, nname);
                o->buf[o->len++] = '"';
            } else {
                rc = write_string(o, name, nname);
                if (rc != ST_OK) return rc;
                RESERVE(o, 1);
            }
            o->buf[o->len++] = ':';
        }
        rc = write_value(o, base, type, val, left, depth + 1, skip, &vsize);
        if (rc != ST_OK) return rc;
        if (id != NULL && nname == 3 && memcmp(name, "_id", 3) == 0) {
            id->start = (p - base) + (Py_ssize_t)elem;
            id->end = (p - base) + (Py_ssize_t)(v + vsize);
        }
        pos = v + vsize;
        index++;
        written++;
    }
    return ST_OK;
}

/* Write the document (or array) at p, which has avail bytes before the end of its
 * enclosing document's elements; skip (may be NULL) leaves elements out. */
int write_doc(Out *o, const uint8_t *base, const uint8_t *p, size_t avail, int is_array,
              int depth, IdSpan *id, const Skip *skip) {
    if (avail < 5) return ST_MALFORMED;
    int32_t size = rd_i32(p);
    if (size < 5 || (size_t)size > avail || p[size - 1] != 0) return ST_MALFORMED;
    RESERVE(o, 1);
    o->buf[o->len++] = is_array ? '[' : '{';
    KeySet ks;
    ks.count = 0;
    ks.table = NULL;
    ks.cap = 0;
    int rc = write_elements(o, base, p, (size_t)size, is_array, depth, id, &ks, skip);
    PyMem_Free(ks.table);
    if (rc != ST_OK) return rc;
    RESERVE(o, 1);
    o->buf[o->len++] = is_array ? ']' : '}';
    return ST_OK;
}
