#include "base/method.h"

#include <string.h>

/* Same numbering as llhttp's HTTP_METHOD_MAP (checked by test_http). */
static const char *const names[] = {
    "DELETE",     "GET",      "HEAD",       "POST",     "PUT",    "CONNECT",   "OPTIONS",
    "TRACE",      "COPY",     "LOCK",       "MKCOL",    "MOVE",   "PROPFIND",  "PROPPATCH",
    "SEARCH",     "UNLOCK",   "BIND",       "REBIND",   "UNBIND", "ACL",       "REPORT",
    "MKACTIVITY", "CHECKOUT", "MERGE",      "M-SEARCH", "NOTIFY", "SUBSCRIBE", "UNSUBSCRIBE",
    "PATCH",      "PURGE",    "MKCALENDAR", "LINK",     "UNLINK", "SOURCE",
};

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
    /* DELETE GET HEAD PUT OPTIONS TRACE */
    return m == 0 || m == 1 || m == 2 || m == 4 || m == 6 || m == 7;
}
