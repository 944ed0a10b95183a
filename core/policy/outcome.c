#include "policy/outcome.h"

#include <string.h>

static const char *const kind_names[] = {
    [LV_OUT_NONE] = "none",
    [LV_OUT_STATUS] = "status",
    [LV_OUT_CONNECT_FAILURE] = "connect-failure",
    [LV_OUT_RESET] = "reset",
    [LV_OUT_TIMEOUT] = "timeout",
    [LV_OUT_PROTOCOL_ERROR] = "protocol-error",
};

static const char *const verdict_names[] = {
    [LV_VERDICT_NONE] = "none",
    [LV_VERDICT_OK] = "ok",
    [LV_VERDICT_FAIL] = "fail",
    [LV_VERDICT_RETRY] = "retry",
};

static bool name_is(const char *want, const char *name, size_t n)
{
    return name && strlen(want) == n && memcmp(want, name, n) == 0;
}

const char *lv_outcome_name(enum lv_outcome_kind k)
{
    if ((unsigned)k >= sizeof(kind_names) / sizeof(kind_names[0]))
        return "?";
    return kind_names[k];
}

enum lv_outcome_kind lv_outcome_from_name(const char *name, size_t n)
{
    for (int k = LV_OUT_CONNECT_FAILURE; k <= LV_OUT_PROTOCOL_ERROR; k++)
        if (name_is(kind_names[k], name, n))
            return (enum lv_outcome_kind)k;
    return LV_OUT_NONE;
}

const char *lv_verdict_name(enum lv_verdict v)
{
    if ((unsigned)v >= sizeof(verdict_names) / sizeof(verdict_names[0]))
        return "?";
    return verdict_names[v];
}

enum lv_verdict lv_verdict_from_name(const char *name, size_t n)
{
    for (int v = LV_VERDICT_OK; v <= LV_VERDICT_RETRY; v++)
        if (name_is(verdict_names[v], name, n))
            return (enum lv_verdict)v;
    return LV_VERDICT_NONE;
}

enum lv_verdict lv_classify_default(uint32_t on_errors, const uint64_t on_status[10],
                                    struct lv_outcome o)
{
    switch (o.kind) {
    case LV_OUT_STATUS:
        if (lv_status_in(on_status, o.status))
            return LV_VERDICT_RETRY;
        return o.status >= 500 && o.status <= 599 ? LV_VERDICT_FAIL : LV_VERDICT_OK;
    case LV_OUT_CONNECT_FAILURE:
    case LV_OUT_RESET:
    case LV_OUT_TIMEOUT:
    case LV_OUT_PROTOCOL_ERROR:
        return (on_errors & lv_outcome_error_bit(o.kind)) ? LV_VERDICT_RETRY : LV_VERDICT_FAIL;
    default:
        return LV_VERDICT_NONE;
    }
}

enum lv_gwerr lv_outcome_gwerr(enum lv_outcome_kind kind)
{
    switch (kind) {
    case LV_OUT_CONNECT_FAILURE:
        return LV_GWERR_CONNECT_FAILURE;
    case LV_OUT_RESET:
        return LV_GWERR_UPSTREAM_RESET;
    case LV_OUT_TIMEOUT:
        return LV_GWERR_UPSTREAM_TIMEOUT;
    default:
        return LV_GWERR_BAD_UPSTREAM_RESPONSE;
    }
}
