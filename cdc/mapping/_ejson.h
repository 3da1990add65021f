/* Shared by the C sources of cdc.mapping._fastejson: the growable output buffer, raw
 * little-endian reads, and the relaxed Extended JSON writer (_ejson_text.c writes
 * scalars, _ejson_doc.c documents). See _fastejson.c for what the writer guarantees.
 *
 * Every writer returns a status: ST_OK, ST_UNHANDLED (only the Python path may write
 * this input), ST_MALFORMED (damaged BSON) or ST_NOMEM. Writers RESERVE room before
 * they write; nothing is read past the bounds a caller passes in.
 */
#ifndef M2P_EJSON_H
#define M2P_EJSON_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define MAX_DEPTH 100
#define SMALL_KEYS 16
#define ISO_MAX_MS 253402300799999LL

enum { ST_OK = 0, ST_UNHANDLED = 1, ST_MALFORMED = 2, ST_NOMEM = 3 };

typedef struct {
    char *buf;
    size_t len;
    size_t cap;
    int ascii;
} Out;

int out_grow(Out *o, size_t extra);

#define RESERVE(o, n)                                  \
    do {                                               \
        if ((o)->len + (n) > (o)->cap) {               \
            int rc_ = out_grow((o), (n));              \
            if (rc_ != ST_OK) return rc_;              \
        }                                              \
    } while (0)

static inline void put(Out *o, const char *s, size_t n) {
    memcpy(o->buf + o->len, s, n);
    o->len += n;
}
#define PUTLIT(o, s) put((o), (s), sizeof(s) - 1)

static inline int32_t rd_i32(const uint8_t *p) {
    uint32_t v = (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
                 ((uint32_t)p[3] << 24);
    return (int32_t)v;
}

static inline uint32_t rd_u32(const uint8_t *p) { return (uint32_t)rd_i32(p); }

static inline int64_t rd_i64(const uint8_t *p) {
    uint64_t v = (uint64_t)rd_u32(p) | ((uint64_t)rd_u32(p + 4) << 32);
    return (int64_t)v;
}

/* Length of the valid UTF-8 sequence starting at s[0] >= 0x80 (Python's strict
 * decoder: no overlongs, no surrogates, nothing above U+10FFFF), or 0. */
static inline size_t utf8_seq(const uint8_t *s, size_t n) {
    uint8_t c = s[0];
    if (c >= 0xC2 && c <= 0xDF) {
        return (n >= 2 && (s[1] & 0xC0) == 0x80) ? 2 : 0;
    }
    if (c >= 0xE0 && c <= 0xEF) {
        if (n < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80) return 0;
        if (c == 0xE0 && s[1] < 0xA0) return 0;  /* overlong */
        if (c == 0xED && s[1] >= 0xA0) return 0; /* surrogate */
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (n < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 ||
            (s[3] & 0xC0) != 0x80)
            return 0;
        if (c == 0xF0 && s[1] < 0x90) return 0;  /* overlong */
        if (c == 0xF4 && s[1] >= 0x90) return 0; /* above U+10FFFF */
        return 4;
    }
    return 0;
}

/* Whether any of the 8 bytes in v is >= 0x80, < 0x20, '"' or '\\' (may say yes for a
 * plain byte that follows such a byte; never says no wrongly). */
static inline uint64_t care_mask(uint64_t v) {
    const uint64_t ones = 0x0101010101010101ULL, high = 0x8080808080808080ULL;
    uint64_t quote = v ^ (ones * '"'), backslash = v ^ (ones * '\\');
    uint64_t control = (v - ones * 0x20) & ~v & high; /* some byte < 0x20 */
    uint64_t quotes = (quote - ones) & ~quote & high;  /* some byte == '"' */
    uint64_t backslashes = (backslash - ones) & ~backslash & high;
    /* A borrow only flags bytes above a truly flagged one: the lowest bit is exact. */
    return control | quotes | backslashes | (v & high);
}

static inline int needs_care(uint64_t v) { return care_mask(v) != 0; }

extern uint8_t PLAIN[256]; /* 1: an ASCII byte written as itself */
extern const char HEXDIGITS[];

/* _ejson_text.c: scalars. */
void init_tables(void);
int write_string(Out *o, const uint8_t *s, size_t n);
void write_u64(Out *o, uint64_t v);
int write_i64(Out *o, int64_t v);
int write_double(Out *o, double x);
int write_oid(Out *o, const uint8_t *v);
int write_date(Out *o, int64_t ms);
int write_binary(Out *o, const uint8_t *data, size_t n, uint8_t subtype);
int write_regex(Out *o, const uint8_t *pat, size_t np, const uint8_t *opt, size_t nopt);

/* _ejson_doc.c: documents. */
typedef struct {
    Py_ssize_t start; /* offset of the top-level _id element in raw, -1 if none */
    Py_ssize_t end;
} IdSpan;

/* Elements (by the address of their type byte) a document write leaves out, for
 * column mode's rest: the lifted values and child arrays. Their field names still
 * count for the duplicate check. */
typedef struct {
    const uint8_t *const *at;
    size_t n;
} Skip;

int write_doc(Out *o, const uint8_t *base, const uint8_t *p, size_t avail, int is_array,
              int depth, IdSpan *id, const Skip *skip);
int write_value(Out *o, const uint8_t *base, uint8_t type, const uint8_t *val, size_t left,
                int depth, const Skip *skip, size_t *vsize);
int value_size(uint8_t type, const uint8_t *val, size_t left, size_t *vsize);

#endif
