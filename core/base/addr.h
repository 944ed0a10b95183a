/*
 * addr: the one parser of network addresses: "host:port" text (IPv6 literals in brackets), IP
 * literals to socket addresses, and socket addresses back to "ip:port" text. Pure: no libuv, no
 * resolving (a name stays a name; net/ and store/ resolve it with uv_getaddrinfo).
 *
 * Errors follow the base/net/store convention (README, "Development"): 0 on success, a
 * negative errno code on failure (-EINVAL: not an address; -ENAMETOOLONG: a host longer than
 * LV_ADDR_HOST_MAX - 1; -ENOSPC: an output buffer too small), and, where a caller shows it to
 * a person, the reason in the caller's buffer.
 */
#ifndef LV_ADDR_H
#define LV_ADDR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* Room for a host name (RFC 1035: 253 characters) and its NUL. */
#define LV_ADDR_HOST_MAX 256
/* Room for "[ipv6%zone]:65535" and its NUL. */
#define LV_ADDR_TEXT_MAX 64

struct lv_addr {
    char host[LV_ADDR_HOST_MAX]; /* IPv6 without its brackets */
    uint16_t port;               /* 1..65535 */
    int family;                  /* AF_INET or AF_INET6 for an IP literal; AF_UNSPEC for a name */
};

/**
 * Parses `n` bytes of "host:port": "example.com:80", "10.0.0.1:80" or "[::1]:80". A name is
 * letters, digits, '.', '-' and '_', not starting with '.' or '-' and without "..". The port
 * is decimal digits only, 1..65535. A bare IPv6 literal ("::1:80") is refused: it needs
 * brackets. Returns 0, or a negative errno with the reason in `why` (may be NULL).
 */
int lv_addr_parse(const char *s, size_t n, struct lv_addr *out, char *why, size_t whylen);

/**
 * The socket address of the IP literal `host` ("10.0.0.1", "::1" or "[::1]") and `port`.
 * Returns 0, or -EINVAL if `host` is not an IP literal (a name: resolve it).
 */
int lv_addr_from_ip(const char *host, uint16_t port, struct sockaddr_storage *out);

/** The family of the IP literal `host` (brackets allowed for IPv6), or AF_UNSPEC for a name. */
int lv_addr_ip_family(const char *host);

/**
 * Writes `sa` as "10.0.0.1:80" or "[::1]:80" (NUL-terminated) into `out`. Returns 0, -EINVAL
 * for a family other than IPv4/IPv6, -ENOSPC if `cap` is too small (`out` then holds "?").
 */
int lv_addr_format(const struct sockaddr *sa, char *out, size_t cap);

/** Writes the address part only ("10.0.0.1", "::1"), same returns as lv_addr_format. */
int lv_addr_format_ip(const struct sockaddr *sa, char *out, size_t cap);

#endif
