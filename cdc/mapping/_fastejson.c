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
 * Doubles: the Python path lets msgspec write finite doubles of magnitude < 1e16
 * (shortest round-trip digits, msgspec's layout: "1.5", "100.0", "1e-7",
 * "0.00001") and wraps the others in {"$numberDouble": repr(x)}. Shortest digits
 * come from an exact check (m / 10**s == x for the smallest s, unique candidate)
 * and otherwise from PyOS_double_to_string(x, 'r'), CPython's repr.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define MAX_DEPTH 100
#define SMALL_KEYS 16

enum { ST_OK = 0, ST_UNHANDLED = 1, ST_MALFORMED = 2, ST_NOMEM = 3 };

typedef struct {
    char *buf;
    size_t len;
    size_t cap;
    int ascii;
} Out;

/* One output buffer reused across calls: the GIL is held throughout and no Python
 * code runs while it is in use. */
static Out g_out = {NULL, 0, 0, 1};

static int out_grow(Out *o, size_t extra) {
    size_t cap = o->cap ? o->cap : 4096;
    while (cap < o->len + extra) {
        if (cap > ((size_t)PY_SSIZE_T_MAX) / 2) return ST_NOMEM;
        cap *= 2;
    }
    char *buf = PyMem_Realloc(o->buf, cap);
    if (buf == NULL) return ST_NOMEM;
    o->buf = buf;
    o->cap = cap;
    return ST_OK;
}

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

/* --- strings ------------------------------------------------------------------- */

/* 0: copy; 1: short escape; 2: \u00XX. As msgspec writes JSON strings. */
static uint8_t ESC[128];
static char ESC_CHAR[128];
static uint8_t PLAIN[256]; /* 1: an ASCII byte written as itself */

static void init_tables(void) {
    for (int c = 0x20; c < 0x80; c++) PLAIN[c] = 1;
    PLAIN['"'] = 0;
    PLAIN['\\'] = 0;
    for (int c = 0; c < 0x20; c++) ESC[c] = 2;
    ESC['"'] = 1; ESC_CHAR['"'] = '"';
    ESC['\\'] = 1; ESC_CHAR['\\'] = '\\';
    ESC['\b'] = 1; ESC_CHAR['\b'] = 'b';
    ESC['\t'] = 1; ESC_CHAR['\t'] = 't';
    ESC['\n'] = 1; ESC_CHAR['\n'] = 'n';
    ESC['\f'] = 1; ESC_CHAR['\f'] = 'f';
    ESC['\r'] = 1; ESC_CHAR['\r'] = 'r';
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

/* Write s[0:n] as a JSON string (quotes included); UTF-8 is validated. */
static int write_string(Out *o, const uint8_t *s, size_t n) {
    static const char HEX[] = "0123456789abcdef";
    if (n > (((size_t)PY_SSIZE_T_MAX) - 2) / 6) return ST_NOMEM;
    RESERVE(o, 6 * n + 2);
    char *w = o->buf + o->len;
    *w++ = '"';
    size_t i = 0;
    while (i < n) {
        /* Eight plain ASCII bytes at a time (no quote, backslash or control byte). */
        while (i + 8 <= n) {
            uint64_t v;
            memcpy(&v, s + i, 8);
            if (needs_care(v)) break;
            memcpy(w, &v, 8);
            w += 8;
            i += 8;
        }
        while (i < n && PLAIN[s[i]]) *w++ = (char)s[i++];
        if (i >= n) break;
        uint8_t c = s[i];
        if (c < 0x80) {
            uint8_t e = ESC[c];
            if (e == 0) {
                *w++ = (char)c;
            } else if (e == 1) {
                *w++ = '\\';
                *w++ = ESC_CHAR[c];
            } else {
                memcpy(w, "\\u00", 4);
                w[4] = HEX[c >> 4];
                w[5] = HEX[c & 15];
                w += 6;
            }
            i++;
        } else {
            size_t k = utf8_seq(s + i, n - i);
            if (k == 0) return ST_MALFORMED;
            memcpy(w, s + i, k);
            w += k;
            i += k;
            o->ascii = 0;
        }
    }
    *w++ = '"';
    o->len = (size_t)(w - o->buf);
    return ST_OK;
}

/* --- numbers ------------------------------------------------------------------- */

static void write_u64(Out *o, uint64_t v) {
    char tmp[24];
    int i = 24;
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    put(o, tmp + i, (size_t)(24 - i));
}

static int write_i64(Out *o, int64_t v) {
    RESERVE(o, 24);
    if (v < 0) {
        o->buf[o->len++] = '-';
        write_u64(o, (uint64_t)0 - (uint64_t)v);
    } else {
        write_u64(o, (uint64_t)v);
    }
    return ST_OK;
}

static const double POW10[23] = {
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* Shortest round-trip digits of finite a > 0 as an integer m and a power s with
 * a == m / 10**s; 1 when found exactly and uniquely, 0 to ask repr. */
static int shortest_exact(double a, uint64_t *m_out, int *s_out) {
    for (int s = 0; s <= 22; s++) {
        double scaled = a * POW10[s];
        if (!(scaled < 9007199254740992.0)) return 0; /* 2**53: beyond exact integers */
        /* A candidate c (c / 10**s rounds to a) lies within scaled * 2**-52 of scaled:
         * skip the divisions unless the nearest integer r is that close. */
        double t = (double)(int64_t)scaled;
        double r = (scaled - t >= 0.5) ? t + 1.0 : t;
        double tol = scaled * 0x1p-50;
        if (fabs(scaled - r) > tol || r < 1.0) continue;
        if (tol < 0.25) { /* only r can be a candidate */
            if (r / POW10[s] != a) continue;
            *m_out = (uint64_t)r;
            *s_out = s;
            return 1;
        }
        int found = 0;
        double hit = 0.0;
        for (int d = -1; d <= 1; d++) {
            double c = r + d;
            if (c >= 1.0 && c / POW10[s] == a) {
                found++;
                hit = c;
            }
        }
        if (found == 1) {
            *m_out = (uint64_t)hit;
            *s_out = s;
            return 1;
        }
        if (found > 1) return 0; /* two shortest candidates: repr picks the nearest */
    }
    return 0;
}

/* Digits (no leading/trailing zeros) and decimal point position kk of finite a > 0:
 * a == 0.DIGITS * 10**kk. Returns the digit count, or -1 on memory error. */
static int shortest_digits(double a, char *digits, int *kk) {
    uint64_t m;
    int s;
    if (shortest_exact(a, &m, &s)) {
        while (m % 10 == 0) {
            m /= 10;
            s--;
        }
        char tmp[24];
        int i = 24;
        while (m) {
            tmp[--i] = (char)('0' + m % 10);
            m /= 10;
        }
        int n = 24 - i;
        memcpy(digits, tmp + i, (size_t)n);
        *kk = n - s;
        return n;
    }
    char *text = PyOS_double_to_string(a, 'r', 0, 0, NULL);
    if (text == NULL) return -1;
    int n = 0, point = -1, exp10 = 0, leading = 1, skipped = 0;
    const char *p = text;
    for (; *p && *p != 'e'; p++) {
        if (*p == '.') {
            point = n + skipped;
            continue;
        }
        if (leading && *p == '0') {
            skipped++;
            continue;
        }
        leading = 0;
        if (n < 20) digits[n++] = *p;
    }
    if (*p == 'e') exp10 = atoi(p + 1);
    PyMem_Free(text);
    if (point < 0) point = n + skipped;
    while (n > 1 && digits[n - 1] == '0') n--;
    *kk = point - skipped + exp10;
    return n;
}

static void write_exponent(Out *o, int e) {
    if (e < 0) {
        o->buf[o->len++] = '-';
        e = -e;
    }
    char tmp[8];
    int i = 8;
    do {
        tmp[--i] = (char)('0' + e % 10);
        e /= 10;
    } while (e);
    put(o, tmp + i, (size_t)(8 - i));
}

/* A finite double of magnitude < 1e16, other than -0.0, as msgspec writes it. */
static int write_plain_double(Out *o, double x) {
    RESERVE(o, 48);
    if (x == 0.0) {
        PUTLIT(o, "0.0");
        return ST_OK;
    }
    if (x < 0) {
        o->buf[o->len++] = '-';
        x = -x;
    }
    char d[24];
    int kk;
    int n = shortest_digits(x, d, &kk);
    if (n < 0) return ST_NOMEM;
    if (kk >= n && kk <= 16) { /* integral: digits, zeros, ".0" */
        put(o, d, (size_t)n);
        for (int i = n; i < kk; i++) o->buf[o->len++] = '0';
        PUTLIT(o, ".0");
    } else if (kk > 0 && kk <= 16) {
        put(o, d, (size_t)kk);
        o->buf[o->len++] = '.';
        put(o, d + kk, (size_t)(n - kk));
    } else if (kk > -5 && kk <= 0) {
        PUTLIT(o, "0.");
        for (int i = 0; i < -kk; i++) o->buf[o->len++] = '0';
        put(o, d, (size_t)n);
    } else {
        o->buf[o->len++] = d[0];
        if (n > 1) {
            o->buf[o->len++] = '.';
            put(o, d + 1, (size_t)(n - 1));
        }
        o->buf[o->len++] = 'e';
        write_exponent(o, kk - 1);
    }
    return ST_OK;
}

static int write_double(Out *o, double x) {
    if (isfinite(x) && x > -1e16 && x < 1e16 && !(x == 0.0 && signbit(x))) {
        return write_plain_double(o, x);
    }
    /* Relaxed mode wraps non-finite values, -0.0 and |x| >= 1e16 (see ejson.py). */
    RESERVE(o, 64);
    PUTLIT(o, "{\"$numberDouble\":\"");
    if (isnan(x)) {
        PUTLIT(o, "NaN");
    } else if (isinf(x)) {
        if (x > 0) PUTLIT(o, "Infinity");
        else PUTLIT(o, "-Infinity");
    } else {
        char *text = PyOS_double_to_string(x, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
        if (text == NULL) return ST_NOMEM;
        size_t n = strlen(text);
        if (n > 30) {
            PyMem_Free(text);
            return ST_NOMEM;
        }
        put(o, text, n);
        PyMem_Free(text);
    }
    PUTLIT(o, "\"}");
    return ST_OK;
}

/* --- other scalars ------------------------------------------------------------- */

static const char HEXDIGITS[] = "0123456789abcdef";

static int write_oid(Out *o, const uint8_t *v) {
    RESERVE(o, 40);
    PUTLIT(o, "{\"$oid\":\"");
    for (int i = 0; i < 12; i++) {
        o->buf[o->len++] = HEXDIGITS[v[i] >> 4];
        o->buf[o->len++] = HEXDIGITS[v[i] & 15];
    }
    PUTLIT(o, "\"}");
    return ST_OK;
}

#define ISO_MAX_MS 253402300799999LL

static int write_date(Out *o, int64_t ms) {
    RESERVE(o, 64);
    if (ms < 0 || ms > ISO_MAX_MS) {
        PUTLIT(o, "{\"$date\":{\"$numberLong\":\"");
        int rc = write_i64(o, ms);
        if (rc != ST_OK) return rc;
        PUTLIT(o, "\"}}");
        return ST_OK;
    }
    int64_t days = ms / 86400000, rem = ms % 86400000;
    /* Civil date from days since 1970-01-01 (proleptic Gregorian, days >= 0). */
    int64_t z = days + 719468;
    int64_t era = z / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    int day = (int)(doy - (153 * mp + 2) / 5 + 1);
    int month = (int)(mp < 10 ? mp + 3 : mp - 9);
    int year = (int)(yoe + era * 400 + (month <= 2));
    int hour = (int)(rem / 3600000), minute = (int)(rem / 60000 % 60);
    int second = (int)(rem / 1000 % 60), milli = (int)(rem % 1000);
    char *w = o->buf + o->len;
    memcpy(w, "{\"$date\":\"", 10);
    w += 10;
    w[0] = (char)('0' + year / 1000);
    w[1] = (char)('0' + year / 100 % 10);
    w[2] = (char)('0' + year / 10 % 10);
    w[3] = (char)('0' + year % 10);
    w[4] = '-';
    w[5] = (char)('0' + month / 10);
    w[6] = (char)('0' + month % 10);
    w[7] = '-';
    w[8] = (char)('0' + day / 10);
    w[9] = (char)('0' + day % 10);
    w[10] = 'T';
    w[11] = (char)('0' + hour / 10);
    w[12] = (char)('0' + hour % 10);
    w[13] = ':';
    w[14] = (char)('0' + minute / 10);
    w[15] = (char)('0' + minute % 10);
    w[16] = ':';
    w[17] = (char)('0' + second / 10);
    w[18] = (char)('0' + second % 10);
    w[19] = '.';
    w[20] = (char)('0' + milli / 100);
    w[21] = (char)('0' + milli / 10 % 10);
    w[22] = (char)('0' + milli % 10);
    memcpy(w + 23, "Z\"}", 3);
    o->len += 10 + 26;
    return ST_OK;
}

static int write_binary(Out *o, const uint8_t *data, size_t n, uint8_t subtype) {
    static const char B64[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if (n > (((size_t)PY_SSIZE_T_MAX) - 64) / 2) return ST_NOMEM;
    RESERVE(o, (n + 2) / 3 * 4 + 64);
    PUTLIT(o, "{\"$binary\":{\"base64\":\"");
    char *w = o->buf + o->len;
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = ((uint32_t)data[i] << 16) | ((uint32_t)data[i + 1] << 8) | data[i + 2];
        w[0] = B64[v >> 18];
        w[1] = B64[(v >> 12) & 63];
        w[2] = B64[(v >> 6) & 63];
        w[3] = B64[v & 63];
        w += 4;
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)data[i] << 16;
        w[0] = B64[v >> 18];
        w[1] = B64[(v >> 12) & 63];
        w[2] = '=';
        w[3] = '=';
        w += 4;
    } else if (n - i == 2) {
        uint32_t v = ((uint32_t)data[i] << 16) | ((uint32_t)data[i + 1] << 8);
        w[0] = B64[v >> 18];
        w[1] = B64[(v >> 12) & 63];
        w[2] = B64[(v >> 6) & 63];
        w[3] = '=';
        w += 4;
    }
    o->len = (size_t)(w - o->buf);
    PUTLIT(o, "\",\"subType\":\"");
    o->buf[o->len++] = HEXDIGITS[subtype >> 4];
    o->buf[o->len++] = HEXDIGITS[subtype & 15];
    PUTLIT(o, "\"}}");
    return ST_OK;
}

/* Regex options as bson decodes them (flags of i, l, m, s, u, x; other letters are
 * dropped) and regex_options() writes them back (in that order). */
static int write_regex(Out *o, const uint8_t *pat, size_t np, const uint8_t *opt,
                       size_t nopt) {
    static const char LETTERS[] = "ilmsux";
    int seen[6] = {0, 0, 0, 0, 0, 0};
    for (size_t i = 0; i < nopt; i++) {
        const char *hit = memchr(LETTERS, opt[i], 6);
        if (hit != NULL) seen[hit - LETTERS] = 1;
    }
    /* bson decodes the options as UTF-8 text too. */
    for (size_t i = 0; i < nopt;) {
        if (opt[i] < 0x80) {
            i++;
            continue;
        }
        size_t k = utf8_seq(opt + i, nopt - i);
        if (k == 0) return ST_MALFORMED;
        i += k;
    }
    RESERVE(o, 40);
    PUTLIT(o, "{\"$regularExpression\":{\"pattern\":");
    int rc = write_string(o, pat, np);
    if (rc != ST_OK) return rc;
    RESERVE(o, 32);
    PUTLIT(o, ",\"options\":\"");
    for (int i = 0; i < 6; i++)
        if (seen[i]) o->buf[o->len++] = LETTERS[i];
    PUTLIT(o, "\"}}");
    return ST_OK;
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

typedef struct {
    Py_ssize_t start; /* offset of the top-level _id element in raw, -1 if none */
    Py_ssize_t end;
} IdSpan;

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

static int write_doc(Out *o, const uint8_t *base, const uint8_t *p, size_t avail,
                     int is_array, int depth, IdSpan *id);

static int write_elements(Out *o, const uint8_t *base, const uint8_t *p, size_t size,
                          int is_array, int depth, IdSpan *id, KeySet *ks) {
    size_t pos = 4, end = size - 1; /* elements live in p[4:size-1]; p[size-1] == 0 */
    size_t index = 0;
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
        int rc;

        RESERVE(o, 1);
        if (index > 0) o->buf[o->len++] = ',';
        if (is_array) {
            if (!is_index_name(name, nname, index)) return ST_UNHANDLED;
        } else {
            if (nname > 0 && name[0] == '$') return ST_UNHANDLED;
            int dup = keyset_add(ks, name, nname);
            if (dup < 0) return ST_NOMEM;
            if (dup) return ST_UNHANDLED;
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
        size_t vsize;
        switch (type) {
        case 0x01: { /* double */
            if (left < 8) return ST_MALFORMED;
            double x;
            uint64_t bits = (uint64_t)rd_i64(val);
            memcpy(&x, &bits, 8);
            rc = write_double(o, x);
            vsize = 8;
            break;
        }
        case 0x02: { /* string */
            if (left < 4) return ST_MALFORMED;
            int32_t n = rd_i32(val);
            if (n < 1 || (size_t)n > left - 4 || val[4 + n - 1] != 0) return ST_MALFORMED;
            if (memchr(val + 4, 0, (size_t)n - 1) != NULL) return ST_UNHANDLED;
            rc = write_string(o, val + 4, (size_t)n - 1);
            vsize = 4 + (size_t)n;
            break;
        }
        case 0x03: /* document */
        case 0x04: /* array */
            if (left < 5) return ST_MALFORMED;
            if (depth >= MAX_DEPTH) return ST_UNHANDLED;
            rc = write_doc(o, base, val, left, type == 0x04, depth + 1, NULL);
            vsize = (size_t)rd_i32(val); /* checked by write_doc */
            break;
        case 0x05: { /* binary */
            if (left < 5) return ST_MALFORMED;
            int32_t n = rd_i32(val);
            if (n < 0 || (size_t)n > left - 5) return ST_MALFORMED;
            if (val[4] == 0x02) return ST_UNHANDLED;
            rc = write_binary(o, val + 5, (size_t)n, val[4]);
            vsize = 5 + (size_t)n;
            break;
        }
        case 0x07: /* ObjectId */
            if (left < 12) return ST_MALFORMED;
            rc = write_oid(o, val);
            vsize = 12;
            break;
        case 0x08: /* bool */
            if (left < 1) return ST_MALFORMED;
            if (val[0] > 1) return ST_MALFORMED;
            RESERVE(o, 5);
            if (val[0]) PUTLIT(o, "true");
            else PUTLIT(o, "false");
            rc = ST_OK;
            vsize = 1;
            break;
        case 0x09: /* UTC datetime */
            if (left < 8) return ST_MALFORMED;
            rc = write_date(o, rd_i64(val));
            vsize = 8;
            break;
        case 0x0A: /* null */
            RESERVE(o, 4);
            PUTLIT(o, "null");
            rc = ST_OK;
            vsize = 0;
            break;
        case 0x0B: { /* regex: two cstrings */
            const uint8_t *pend = memchr(val, 0, left);
            if (pend == NULL) return ST_MALFORMED;
            size_t np = (size_t)(pend - val);
            const uint8_t *opt = pend + 1;
            const uint8_t *oend = memchr(opt, 0, left - np - 1);
            if (oend == NULL) return ST_MALFORMED;
            size_t nopt = (size_t)(oend - opt);
            rc = write_regex(o, val, np, opt, nopt);
            vsize = np + nopt + 2;
            break;
        }
        case 0x10: /* int32 */
            if (left < 4) return ST_MALFORMED;
            rc = write_i64(o, rd_i32(val));
            vsize = 4;
            break;
        case 0x11: /* timestamp: increment, then seconds */
            if (left < 8) return ST_MALFORMED;
            RESERVE(o, 64); /* {"$timestamp":{"t":4294967295,"i":4294967295}} is 46 */
            PUTLIT(o, "{\"$timestamp\":{\"t\":");
            write_u64(o, rd_u32(val + 4));
            PUTLIT(o, ",\"i\":");
            write_u64(o, rd_u32(val));
            PUTLIT(o, "}}");
            rc = ST_OK;
            vsize = 8;
            break;
        case 0x12: /* int64 */
            if (left < 8) return ST_MALFORMED;
            rc = write_i64(o, rd_i64(val));
            vsize = 8;
            break;
        case 0xFF: /* MinKey */
            RESERVE(o, 16);
            PUTLIT(o, "{\"$minKey\":1}");
            rc = ST_OK;
            vsize = 0;
            break;
        case 0x7F: /* MaxKey */
            RESERVE(o, 16);
            PUTLIT(o, "{\"$maxKey\":1}");
            rc = ST_OK;
            vsize = 0;
            break;
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
        if (rc != ST_OK) return rc;
        if (id != NULL && nname == 3 && memcmp(name, "_id", 3) == 0) {
            id->start = (p - base) + (Py_ssize_t)elem;
            id->end = (p - base) + (Py_ssize_t)(v + vsize);
        }
        pos = v + vsize;
        index++;
    }
    return ST_OK;
}

/* Write the document (or array) at p, which has avail bytes before the end of its
 * enclosing document's elements. */
static int write_doc(Out *o, const uint8_t *base, const uint8_t *p, size_t avail,
                     int is_array, int depth, IdSpan *id) {
    if (avail < 5) return ST_MALFORMED;
    int32_t size = rd_i32(p);
    if (size < 5 || (size_t)size > avail || p[size - 1] != 0) return ST_MALFORMED;
    RESERVE(o, 1);
    o->buf[o->len++] = is_array ? '[' : '{';
    KeySet ks;
    ks.count = 0;
    ks.table = NULL;
    ks.cap = 0;
    int rc = write_elements(o, base, p, (size_t)size, is_array, depth, id, &ks);
    PyMem_Free(ks.table);
    if (rc != ST_OK) return rc;
    RESERVE(o, 1);
    o->buf[o->len++] = is_array ? ']' : '}';
    return ST_OK;
}

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
        rc = write_doc(o, raw, raw, n, 0, 0, &id);
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
