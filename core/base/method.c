#include "base/method.h"

#include <string.h>

_Static_assert(LV_METHOD__COUNT < 64, "a method set is one uint64_t");

/* Same numbering as llhttp's HTTP_METHOD_MAP (checked by test_http). */
static const char *const names[] = {
    "DELETE",     "GET",      "HEAD",       "POST",     "PUT",    "CONNECT",   "OPTIONS",
    "TRACE",      "COPY",     "LOCK",       "MKCOL",    "MOVE",   "PROPFIND",  "PROPPATCH",
    "SEARCH",     "UNLOCK",   "BIND",       "REBIND",   "UNBIND", "ACL",       "REPORT",
    "MKACTIVITY", "CHECKOUT", "MERGE",      "M-SEARCH", "NOTIFY", "SUBSCRIBE", "UNSUBSCRIBE",
    "PATCH",      "PURGE",    "MKCALENDAR", "LINK",     "UNLINK", "SOURCE",
};
_Static_assert(sizeof(names) / sizeof(names[0]) == LV_METHOD__COUNT, "one name per method");

int lv_method_from_name(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strlen(names[i]) == len && memcmp(names[i], name, len) == 0)
            return (int)i;
    return -1;
}

const char *lv_method_name(int method)
{
    if (method < 0 || (size_t)method >= sizeof(names) / sizeof(names[0]))
        return "?";
    return names[method];
}

bool lv_method_idempotent(int m)
{
    return m == LV_METHOD_DELETE || m == LV_METHOD_GET || m == LV_METHOD_HEAD ||
           m == LV_METHOD_PUT || m == LV_METHOD_OPTIONS || m == LV_METHOD_TRACE;
}
