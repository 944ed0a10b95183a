/*
 * method: HTTP methods as bits, so a route's method set is one integer. Values follow llhttp's
 * method numbering (llhttp_method_t, < 64), which the http layer maps 1:1.
 */
#ifndef LV_METHOD_H
#define LV_METHOD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Method numbers, as lv_method_from_name returns them (llhttp's numbering). */
enum lv_method {
    LV_METHOD_DELETE = 0,
    LV_METHOD_GET = 1,
    LV_METHOD_HEAD = 2,
    LV_METHOD_POST = 3,
    LV_METHOD_PUT = 4,
    LV_METHOD_CONNECT = 5,
    LV_METHOD_OPTIONS = 6,
    LV_METHOD_TRACE = 7,
    LV_METHOD_COPY = 8,
    LV_METHOD_LOCK = 9,
    LV_METHOD_MKCOL = 10,
    LV_METHOD_MOVE = 11,
    LV_METHOD_PROPFIND = 12,
    LV_METHOD_PROPPATCH = 13,
    LV_METHOD_SEARCH = 14,
    LV_METHOD_UNLOCK = 15,
    LV_METHOD_BIND = 16,
    LV_METHOD_REBIND = 17,
    LV_METHOD_UNBIND = 18,
    LV_METHOD_ACL = 19,
    LV_METHOD_REPORT = 20,
    LV_METHOD_MKACTIVITY = 21,
    LV_METHOD_CHECKOUT = 22,
    LV_METHOD_MERGE = 23,
    LV_METHOD_M_SEARCH = 24,
    LV_METHOD_NOTIFY = 25,
    LV_METHOD_SUBSCRIBE = 26,
    LV_METHOD_UNSUBSCRIBE = 27,
    LV_METHOD_PATCH = 28,
    LV_METHOD_PURGE = 29,
    LV_METHOD_MKCALENDAR = 30,
    LV_METHOD_LINK = 31,
    LV_METHOD_UNLINK = 32,
    LV_METHOD_SOURCE = 33,
    LV_METHOD__COUNT
};

#define LV_METHOD_BIT(m) ((uint64_t)1 << (m))

/** llhttp method number for an upper-case name, or -1 if unknown. */
int lv_method_from_name(const char *name, size_t len);
/** Name of a method number ("GET"), or "?" */
const char *lv_method_name(int method);
/** RFC 9110 §9.2.2 idempotent methods: GET HEAD OPTIONS TRACE PUT DELETE. */
bool lv_method_idempotent(int method);

#endif
