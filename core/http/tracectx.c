#include "http/tracectx.h"

#include <string.h>

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1; /* upper case is invalid in traceparent */
}

/* n bytes from 2n lower-case hex chars; false on anything else or an all-zero value. */
static bool hexbytes(const char *p, uint8_t *out, size_t n, bool nonzero)
{
    uint8_t any = 0;
    for (size_t i = 0; i < n; i++) {
        int hi = hexval(p[2 * i]), lo = hexval(p[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return false;
        out[i] = (uint8_t)(hi << 4 | lo);
        any |= out[i];
    }
    return !nonzero || any != 0;
}

bool lv_traceparent_parse(const char *p, size_t n, struct lv_tracectx *out)
{
    if (n < LV_TRACEPARENT_LEN)
        return false;
    uint8_t version;
    if (!hexbytes(p, &version, 1, false) || version == 0xff)
        return false;
    if (version == 0 && n != LV_TRACEPARENT_LEN)
        return false;
    if (version != 0 && n > LV_TRACEPARENT_LEN && p[LV_TRACEPARENT_LEN] != '-')
        return false;
    if (p[2] != '-' || p[35] != '-' || p[52] != '-')
        return false;
    struct lv_tracectx t;
    if (!hexbytes(p + 3, t.trace_id, LV_TRACE_ID_LEN, true) ||
        !hexbytes(p + 36, t.parent_id, LV_SPAN_ID_LEN, true) ||
        !hexbytes(p + 53, &t.flags, 1, false))
        return false;
    *out = t;
    return true;
}

void lv_trace_hex(const uint8_t *id, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[id[i] >> 4];
        out[2 * i + 1] = digits[id[i] & 15];
    }
    out[2 * n] = '\0';
}

void lv_traceparent_format(const uint8_t trace_id[LV_TRACE_ID_LEN],
                           const uint8_t span_id[LV_SPAN_ID_LEN], uint8_t flags,
                           char out[LV_TRACEPARENT_LEN + 1])
{
    memcpy(out, "00-", 3);
    lv_trace_hex(trace_id, LV_TRACE_ID_LEN, out + 3);
    out[35] = '-';
    lv_trace_hex(span_id, LV_SPAN_ID_LEN, out + 36);
    out[52] = '-';
    lv_trace_hex(&flags, 1, out + 53);
}

static bool key_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '*' ||
           c == '/';
}

/* One list member, trimmed and not empty: key=value. */
static bool member_valid(const char *p, size_t n)
{
    const char *eq = memchr(p, '=', n);
    if (!eq)
        return false;
    size_t kl = (size_t)(eq - p), vl = n - kl - 1;
    if (kl == 0 || kl > 256 || vl == 0 || vl > 256)
        return false;
    /* key: simple-key, or tenant-id "@" system-id; starts with a letter or digit */
    if (!((p[0] >= 'a' && p[0] <= 'z') || (p[0] >= '0' && p[0] <= '9')))
        return false;
    int ats = 0;
    for (size_t i = 0; i < kl; i++) {
        if (p[i] == '@') {
            if (++ats > 1 || i == 0 || i + 1 == kl)
                return false;
        } else if (!key_char(p[i])) {
            return false;
        }
    }
    for (size_t i = 0; i < vl; i++) {
        unsigned char c = (unsigned char)eq[1 + i];
        if (c < 0x20 || c > 0x7e || c == ',' || c == '=')
            return false;
    }
    return eq[vl] != ' ';
}

bool lv_tracestate_valid(const char *p, size_t n)
{
    size_t members = 0, i = 0;
    while (i <= n) {
        size_t a = i;
        while (i < n && p[i] != ',')
            i++;
        size_t b = i;
        while (a < b && (p[a] == ' ' || p[a] == '\t'))
            a++;
        while (b > a && (p[b - 1] == ' ' || p[b - 1] == '\t'))
            b--;
        if (a < b) {
            if (++members > 32 || !member_valid(p + a, b - a))
                return false;
        }
        i++;
    }
    return true;
}
