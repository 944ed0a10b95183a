#include "base/addr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

static int fail(char *why, size_t whylen, int err, const char *msg)
{
    if (why && whylen)
        snprintf(why, whylen, "%s", msg);
    return err;
}

static bool name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '-' || c == '_';
}

/* Copies `n` bytes of a bracketed literal's inside into `buf`, when it is a valid IPv6. */
static bool ipv6_inside(const char *p, size_t n, char *buf, size_t cap)
{
    struct in6_addr a;
    if (n == 0 || n >= cap)
        return false;
    memcpy(buf, p, n);
    buf[n] = '\0';
    return inet_pton(AF_INET6, buf, &a) == 1;
}

int lv_addr_parse(const char *s, size_t n, struct lv_addr *out, char *why, size_t whylen)
{
    memset(out, 0, sizeof(*out));
    if (!s || n == 0)
        return fail(why, whylen, -EINVAL, "empty address");
    const char *colon; /* the ':' before the port */
    if (s[0] == '[') {
        const char *close = memchr(s, ']', n);
        if (!close)
            return fail(why, whylen, -EINVAL, "'[' without ']'");
        size_t hl = (size_t)(close - s) - 1;
        if (hl >= sizeof(out->host))
            return fail(why, whylen, -ENAMETOOLONG, "host too long");
        if (!ipv6_inside(s + 1, hl, out->host, sizeof(out->host)))
            return fail(why, whylen, -EINVAL, "not an IPv6 address in brackets");
        out->family = AF_INET6;
        colon = close + 1;
        if (colon == s + n || *colon != ':')
            return fail(why, whylen, -EINVAL, "expected ':port' after ']'");
    } else {
        colon = memchr(s, ':', n);
        if (!colon)
            return fail(why, whylen, -EINVAL, "expected host:port");
        if (memchr(colon + 1, ':', n - (size_t)(colon + 1 - s)))
            return fail(why, whylen, -EINVAL, "an IPv6 address needs brackets: [addr]:port");
        size_t hl = (size_t)(colon - s);
        if (hl == 0)
            return fail(why, whylen, -EINVAL, "empty host");
        if (hl >= sizeof(out->host))
            return fail(why, whylen, -ENAMETOOLONG, "host too long");
        for (size_t i = 0; i < hl; i++)
            if (!name_char(s[i]))
                return fail(why, whylen, -EINVAL, "invalid character in host");
        if (s[0] == '.' || s[0] == '-')
            return fail(why, whylen, -EINVAL, "invalid host name");
        for (size_t i = 1; i < hl; i++)
            if (s[i] == '.' && s[i - 1] == '.')
                return fail(why, whylen, -EINVAL, "invalid host name");
        memcpy(out->host, s, hl);
        out->host[hl] = '\0';
        out->family = lv_addr_ip_family(out->host);
    }
    const char *p = colon + 1, *end = s + n;
    if (p == end)
        return fail(why, whylen, -EINVAL, "missing port");
    unsigned long port = 0;
    for (; p < end; p++) {
        if (*p < '0' || *p > '9')
            return fail(why, whylen, -EINVAL, "port is not a number");
        port = port * 10 + (unsigned long)(*p - '0');
        if (port > 65535)
            return fail(why, whylen, -EINVAL, "port out of range 1-65535");
    }
    if (port == 0)
        return fail(why, whylen, -EINVAL, "port out of range 1-65535");
    out->port = (uint16_t)port;
    return 0;
}

/* `host` without IPv6 brackets, in `buf` when they had to go. */
static const char *unbracket(const char *host, char *buf, size_t cap)
{
    size_t n = strlen(host);
    if (n >= 2 && host[0] == '[' && host[n - 1] == ']' && n - 2 < cap) {
        memcpy(buf, host + 1, n - 2);
        buf[n - 2] = '\0';
        return buf;
    }
    return host;
}

int lv_addr_from_ip(const char *host, uint16_t port, struct sockaddr_storage *out)
{
    memset(out, 0, sizeof(*out));
    struct sockaddr_in *a4 = (struct sockaddr_in *)out;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons(port);
        return 0;
    }
    char buf[INET6_ADDRSTRLEN + 2];
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)out;
    if (inet_pton(AF_INET6, unbracket(host, buf, sizeof(buf)), &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons(port);
        return 0;
    }
    memset(out, 0, sizeof(*out));
    return -EINVAL;
}

int lv_addr_ip_family(const char *host)
{
    struct sockaddr_storage ss;
    return lv_addr_from_ip(host, 0, &ss) == 0 ? ss.ss_family : AF_UNSPEC;
}

static int format(const struct sockaddr *sa, char *out, size_t cap, bool with_port)
{
    char ip[INET6_ADDRSTRLEN];
    unsigned port;
    int n;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
        port = ntohs(a->sin_port);
        n = with_port ? snprintf(out, cap, "%s:%u", ip, port) : snprintf(out, cap, "%s", ip);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof(ip));
        port = ntohs(a->sin6_port);
        n = with_port ? snprintf(out, cap, "[%s]:%u", ip, port) : snprintf(out, cap, "%s", ip);
    } else {
        if (cap)
            snprintf(out, cap, "?");
        return -EINVAL;
    }
    if (n < 0 || (size_t)n >= cap) {
        if (cap)
            snprintf(out, cap, "?");
        return -ENOSPC;
    }
    return 0;
}

int lv_addr_format(const struct sockaddr *sa, char *out, size_t cap)
{
    return format(sa, out, cap, true);
}

int lv_addr_format_ip(const struct sockaddr *sa, char *out, size_t cap)
{
    return format(sa, out, cap, false);
}
