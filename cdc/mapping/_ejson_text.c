/* Relaxed Extended JSON of BSON scalars: strings (escaped as msgspec does, UTF-8
 * validated), numbers (msgspec's and repr's digits), ObjectId, dates, binary, regex.
 * See _fastejson.c for the contract and _ejson.h for the buffer. */
#include "_ejson.h"

int out_grow(Out *o, size_t extra) {
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

/* --- strings ------------------------------------------------------------------- */

/* 0: copy; 1: short escape; 2: \u00XX. As msgspec writes JSON strings. */
static uint8_t ESC[128];
static char ESC_CHAR[128];
uint8_t PLAIN[256]; /* 1: an ASCII byte written as itself */

void init_tables(void) {
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

/* Write s[0:n] as a JSON string (quotes included); UTF-8 is validated. */
int write_string(Out *o, const uint8_t *s, size_t n) {
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

void write_u64(Out *o, uint64_t v) {
    char tmp[24];
    int i = 24;
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    put(o, tmp + i, (size_t)(24 - i));
}

int write_i64(Out *o, int64_t v) {
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

int write_double(Out *o, double x) {
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

const char HEXDIGITS[] = "0123456789abcdef";

int write_oid(Out *o, const uint8_t *v) {
    RESERVE(o, 40);
    PUTLIT(o, "{\"$oid\":\"");
    for (int i = 0; i < 12; i++) {
        o->buf[o->len++] = HEXDIGITS[v[i] >> 4];
        o->buf[o->len++] = HEXDIGITS[v[i] & 15];
    }
    PUTLIT(o, "\"}");
    return ST_OK;
}

int write_date(Out *o, int64_t ms) {
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

int write_binary(Out *o, const uint8_t *data, size_t n, uint8_t subtype) {
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
int write_regex(Out *o, const uint8_t *pat, size_t np, const uint8_t *opt,
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

