/*
 * fuzz_fault: the two fault parsers bytes reach from outside. The whole input is a Levee-Fault
 * header value (a client's, README "levee dev"); it is also a POST /faults body for the admin
 * API (admin/faultapi.c, jansson underneath). A parse that succeeds must give only values the
 * request path accepts; one that fails must say why; an accepted rule is listed and removed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin/faultapi.h"
#include "base/buf.h"
#include "common.h"
#include "conf/config.h"
#include "policy/fault.h"
#include "policy/faultrules.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct lv_config *cfg;
static struct lv_fault_rules rules;

static void check_header(const char *p, size_t n)
{
    struct lv_faults f;
    char why[96];
    memset(why, 'x', sizeof(why));
    if (!lv_fault_header_parse(p, n, &f, why, sizeof(why))) {
        if (!memchr(why, 0, sizeof(why)) || why[0] == 0)
            fz_fail("a refused header says nothing");
        return;
    }
    bool any = false;
    for (int k = 0; k < LV_FAULT_KINDS; k++) {
        const struct lv_fault_one *o = &f.k[k];
        if (!o->on)
            continue;
        any = true;
        if (!(o->percent >= 0 && o->percent <= 100))
            fz_fail("percent %g out of range", o->percent);
        if (k == LV_FAULT_ABORT && (o->value < 200 || o->value > 599))
            fz_fail("abort status %llu", (unsigned long long)o->value);
        if (k == LV_FAULT_DELAY && (o->value < 1 || o->value > 3600000))
            fz_fail("delay %llu ms", (unsigned long long)o->value);
        if (k == LV_FAULT_THROTTLE && o->value < 1)
            fz_fail("throttle rate 0");
    }
    if (!any)
        fz_fail("an accepted header with no fault");
}

static void check_body(const char *p, size_t n)
{
    struct lv_buf out = LV_BUF_INIT;
    const char *allow = NULL;
    int st = lv_faultapi_handle(&rules, cfg, "POST", "/faults", 7, p, n, &out, &allow);
    if (st != 201 && st != 400)
        fz_fail("POST /faults answered %d", st);
    if (!out.len || out.data[0] != '{')
        fz_fail("POST /faults answered no JSON object");
    lv_buf_dispose(&out);
    if (st == 201) {
        out = (struct lv_buf)LV_BUF_INIT;
        if (lv_faultapi_handle(&rules, cfg, "GET", "/faults", 7, NULL, 0, &out, &allow) != 200)
            fz_fail("GET /faults failed");
        lv_buf_dispose(&out);
        if (lv_fault_rules_clear(&rules) != 1)
            fz_fail("the accepted rule is not in the table");
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!cfg) {
        cfg = lv_config_new();
        cfg->nroutes = 1;
        cfg->routes = calloc(1, sizeof(*cfg->routes));
        cfg->routes[0].name = strdup("api");
        lv_fault_rules_init(&rules);
    }
    char *p = fz_dup(data, size); /* exact size: a read past the end is caught */
    check_header(p, size);
    check_body(p, size);
    free(p);
    return 0;
}
