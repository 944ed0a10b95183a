/*
 * fuzz_trace: W3C Trace Context headers from clients (http/tracectx.h). A traceparent that
 * parses is written back and must parse to the same context; a version-00 one must come back
 * byte for byte. The same bytes as a tracestate must not crash the validator.
 */
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "http/tracectx.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *p = fz_dup(data, size); /* exact size: a read past the end is caught */
    struct lv_tracectx t;
    if (lv_traceparent_parse(p, size, &t)) {
        char out[LV_TRACEPARENT_LEN + 1];
        lv_traceparent_format(t.trace_id, t.parent_id, t.flags, out);
        struct lv_tracectx u;
        if (!lv_traceparent_parse(out, LV_TRACEPARENT_LEN, &u) || memcmp(&t, &u, sizeof(t)) != 0)
            fz_fail("a parsed traceparent does not survive being written back");
        if (size == LV_TRACEPARENT_LEN && p[0] == '0' && p[1] == '0' && memcmp(out, p, size) != 0)
            fz_fail("a version-00 traceparent changed when written back");
    }
    (void)lv_tracestate_valid(p, size);
    free(p);
    return 0;
}
