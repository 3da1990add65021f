/* Shared by _copyrows.c (rows of one document) and _copyrows_args.c (arguments,
 * batches, streams): the spec of a mapper and the document writer. */
#ifndef M2P_COPYROWS_H
#define M2P_COPYROWS_H

#include "_ejson.h"

#define MAX_PARTS 16
#define MAX_LIFTS 64
#define MAX_CHILDREN 16
#define PG_EPOCH_US 946684800000000LL     /* 2000-01-01 in µs since 1970 */
#define MIN_MS (-62135596800000LL)        /* 0001-01-01T00:00:00.000Z */
#define MAX_MS 253402300799999LL          /* 9999-12-31T23:59:59.999Z */

enum { C_TEXT, C_OBJECTID, C_BIGINT, C_INTEGER, C_DOUBLE, C_BOOLEAN, C_TIMESTAMPTZ,
       C_UUID, C_BYTEA, C_COUNT };

typedef struct {
    const char *part[MAX_PARTS];
    size_t len[MAX_PARTS];
    int n;
} Path;

typedef struct {
    Path path;
    int type;
} Lift;

typedef struct {
    Path path;
    Lift lifts[MAX_LIFTS];
    int nlifts;
    Out *out;
} Child;

typedef struct {
    int doc_mode;
    int staging;
    Lift lifts[MAX_LIFTS];
    int nlifts;
    Child children[MAX_CHILDREN];
    int nchildren;
    Out *root;
} Spec;

/* All rows of one raw document appended to the spec's streams: ST_OK, or another
 * status after which the caller cuts every stream back to where it was. */
int put_document(Spec *s, const uint8_t *raw, size_t n, int64_t version, int stream,
                 int32_t seq, size_t *key_at, size_t *key_len);

static inline void be16(Out *o, int16_t v) {
    uint16_t u = (uint16_t)v;
    o->buf[o->len++] = (char)(u >> 8);
    o->buf[o->len++] = (char)u;
}

static inline void be32(Out *o, int32_t v) {
    uint32_t u = (uint32_t)v;
    for (int s = 24; s >= 0; s -= 8) o->buf[o->len++] = (char)(u >> s);
}

#endif
