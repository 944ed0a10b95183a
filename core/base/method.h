/*
 * method: HTTP methods as bits, so a route's method set is one integer. Values follow llhttp's
 * method numbering (llhttp_method_t, < 64), which the http layer maps 1:1.
 */
#ifndef LV_METHOD_H
#define LV_METHOD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LV_METHOD_BIT(m) ((uint64_t)1 << (m))

enum { LV_METHOD_HEAD = 2 }; /* llhttp's HTTP_HEAD */

/** llhttp method number for an upper-case name, or -1 if unknown. */
int lv_method_from_name(const char *name, size_t len);
/** Name of a method number ("GET"), or "?" */
const char *lv_method_name(int method);
/** RFC 9110 §9.2.2 idempotent methods: GET HEAD OPTIONS TRACE PUT DELETE. */
bool lv_method_idempotent(int method);

#endif
