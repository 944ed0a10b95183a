/* base/addr: "host:port" parsing, IP literals to socket addresses and back. */
#include "base/addr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>

#include "t.h"

static int parse(const char *s, struct lv_addr *a, char *why)
{
    return lv_addr_parse(s, strlen(s), a, why, 128);
}

T_TEST(good_host_ports)
{
    struct lv_addr a;
    char why[128];
    T_CHECK_INT(parse("example.com:80", &a, why), 0);
    T_CHECK_STR(a.host, "example.com");
    T_CHECK_INT(a.port, 80);
    T_CHECK_INT(a.family, AF_UNSPEC);

    T_CHECK_INT(parse("10.0.0.1:8080", &a, why), 0);
    T_CHECK_STR(a.host, "10.0.0.1");
    T_CHECK_INT(a.port, 8080);
    T_CHECK_INT(a.family, AF_INET);

    T_CHECK_INT(parse("[::1]:443", &a, why), 0);
    T_CHECK_STR(a.host, "::1");
    T_CHECK_INT(a.port, 443);
    T_CHECK_INT(a.family, AF_INET6);

    T_CHECK_INT(parse("[2001:db8::1.2.3.4]:1", &a, why), 0);
    T_CHECK_STR(a.host, "2001:db8::1.2.3.4");
    T_CHECK_INT(a.port, 1);

    T_CHECK_INT(parse("localhost:65535", &a, why), 0);
    T_CHECK_INT(a.port, 65535);
    T_CHECK_INT(parse("a_b-c.d:007", &a, why), 0); /* leading zeros: still 7 */
    T_CHECK_INT(a.port, 7);
    T_CHECK_STR(a.host, "a_b-c.d");

    /* Only `n` bytes are read: the rest of a larger buffer does not count. */
    T_CHECK_INT(lv_addr_parse("h:12trailing", 4, &a, why, sizeof(why)), 0);
    T_CHECK_INT(a.port, 12);
    /* `why` may be NULL. */
    T_CHECK_INT(lv_addr_parse("h:1", 3, &a, NULL, 0), 0);
}

static void bad(const char *s, int err, const char *reason)
{
    struct lv_addr a;
    char why[128] = "";
    int rc = parse(s, &a, why);
    if (rc != err || strcmp(why, reason) != 0)
        fprintf(stderr, "  input \"%s\": rc %d why \"%s\"\n", s, rc, why);
    T_CHECK_INT(rc, err);
    T_CHECK_STR(why, reason);
}

T_TEST(bad_host_ports)
{
    bad("", -EINVAL, "empty address");
    bad("host", -EINVAL, "expected host:port");
    bad(":80", -EINVAL, "empty host");
    bad("host:", -EINVAL, "missing port");
    bad("host:0", -EINVAL, "port out of range 1-65535");
    bad("host:65536", -EINVAL, "port out of range 1-65535");
    bad("host:99999999999999999999", -EINVAL, "port out of range 1-65535");
    bad("host:8o", -EINVAL, "port is not a number");
    bad("host:+80", -EINVAL, "port is not a number");
    bad("host:-1", -EINVAL, "port is not a number");
    bad("host: 80", -EINVAL, "port is not a number");
    bad("::1:80", -EINVAL, "an IPv6 address needs brackets: [addr]:port");
    bad("[::1]", -EINVAL, "expected ':port' after ']'");
    bad("[::1]80", -EINVAL, "expected ':port' after ']'");
    bad("[::1:80", -EINVAL, "'[' without ']'");
    bad("[]:80", -EINVAL, "not an IPv6 address in brackets");
    bad("[1.2.3.4]:80", -EINVAL, "not an IPv6 address in brackets");
    bad("[::g]:80", -EINVAL, "not an IPv6 address in brackets");
    bad("[fe80::1%eth0]:80", -EINVAL, "not an IPv6 address in brackets");
    bad("ho st:80", -EINVAL, "invalid character in host");
    bad("host/x:80", -EINVAL, "invalid character in host");
    bad(".host:80", -EINVAL, "invalid host name");
    bad("-host:80", -EINVAL, "invalid host name");
    bad("a..b:80", -EINVAL, "invalid host name");

    char long_host[LV_ADDR_HOST_MAX + 8];
    memset(long_host, 'a', LV_ADDR_HOST_MAX);
    strcpy(long_host + LV_ADDR_HOST_MAX, ":80");
    bad(long_host, -ENAMETOOLONG, "host too long");
    /* One shorter fits. */
    struct lv_addr a;
    T_CHECK_INT(lv_addr_parse(long_host + 1, strlen(long_host + 1), &a, NULL, 0), 0);
    T_CHECK_INT(strlen(a.host), LV_ADDR_HOST_MAX - 1);
}

T_TEST(ip_literals_to_sockaddr)
{
    struct sockaddr_storage ss;
    T_CHECK_INT(lv_addr_from_ip("127.0.0.1", 9000, &ss), 0);
    T_CHECK_INT(ss.ss_family, AF_INET);
    const struct sockaddr_in *a4 = (const struct sockaddr_in *)&ss;
    T_CHECK_INT(ntohs(a4->sin_port), 9000);
    T_CHECK_INT(ntohl(a4->sin_addr.s_addr), 0x7f000001);

    T_CHECK_INT(lv_addr_from_ip("::1", 443, &ss), 0);
    T_CHECK_INT(ss.ss_family, AF_INET6);
    const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)&ss;
    T_CHECK_INT(ntohs(a6->sin6_port), 443);
    T_CHECK(IN6_IS_ADDR_LOOPBACK(&a6->sin6_addr));
    T_CHECK_INT(lv_addr_from_ip("[::1]", 443, &ss), 0); /* brackets as configured */
    T_CHECK_INT(ss.ss_family, AF_INET6);

    T_CHECK_INT(lv_addr_from_ip("localhost", 80, &ss), -EINVAL);
    T_CHECK_INT(ss.ss_family, 0);
    T_CHECK_INT(lv_addr_from_ip("1.2.3", 80, &ss), -EINVAL);
    T_CHECK_INT(lv_addr_from_ip("256.0.0.1", 80, &ss), -EINVAL);
    T_CHECK_INT(lv_addr_from_ip("[1.2.3.4]", 80, &ss), -EINVAL);
    T_CHECK_INT(lv_addr_from_ip("[::1", 80, &ss), -EINVAL);
    T_CHECK_INT(lv_addr_from_ip("", 80, &ss), -EINVAL);

    T_CHECK_INT(lv_addr_ip_family("10.1.2.3"), AF_INET);
    T_CHECK_INT(lv_addr_ip_family("fe80::1"), AF_INET6);
    T_CHECK_INT(lv_addr_ip_family("[fe80::1]"), AF_INET6);
    T_CHECK_INT(lv_addr_ip_family("example.com"), AF_UNSPEC);
}

T_TEST(format_round_trip)
{
    struct sockaddr_storage ss;
    char out[LV_ADDR_TEXT_MAX];
    lv_addr_from_ip("10.0.0.1", 80, &ss);
    T_CHECK_INT(lv_addr_format((struct sockaddr *)&ss, out, sizeof(out)), 0);
    T_CHECK_STR(out, "10.0.0.1:80");
    T_CHECK_INT(lv_addr_format_ip((struct sockaddr *)&ss, out, sizeof(out)), 0);
    T_CHECK_STR(out, "10.0.0.1");
    lv_addr_from_ip("2001:db8::1", 65535, &ss);
    T_CHECK_INT(lv_addr_format((struct sockaddr *)&ss, out, sizeof(out)), 0);
    T_CHECK_STR(out, "[2001:db8::1]:65535");
    T_CHECK_INT(lv_addr_format_ip((struct sockaddr *)&ss, out, sizeof(out)), 0);
    T_CHECK_STR(out, "2001:db8::1");

    /* What format writes, parse reads back. */
    lv_addr_format((struct sockaddr *)&ss, out, sizeof(out));
    struct lv_addr a;
    T_CHECK_INT(lv_addr_parse(out, strlen(out), &a, NULL, 0), 0);
    T_CHECK_STR(a.host, "2001:db8::1");
    T_CHECK_INT(a.port, 65535);

    /* Too small: -ENOSPC and "?"; exactly enough fits. */
    T_CHECK_INT(lv_addr_format((struct sockaddr *)&ss, out, 5), -ENOSPC);
    T_CHECK_STR(out, "?");
    lv_addr_from_ip("1.2.3.4", 5, &ss);
    T_CHECK_INT(lv_addr_format((struct sockaddr *)&ss, out, sizeof("1.2.3.4:5")), 0);
    T_CHECK_STR(out, "1.2.3.4:5");
    T_CHECK_INT(lv_addr_format((struct sockaddr *)&ss, out, sizeof("1.2.3.4:5") - 1), -ENOSPC);

    struct sockaddr_storage unix_ss = {.ss_family = AF_UNIX};
    T_CHECK_INT(lv_addr_format((struct sockaddr *)&unix_ss, out, sizeof(out)), -EINVAL);
    T_CHECK_STR(out, "?");
}

int main(void)
{
    T_RUN(good_host_ports);
    T_RUN(bad_host_ports);
    T_RUN(ip_literals_to_sockaddr);
    T_RUN(format_round_trip);
    T_DONE();
}
