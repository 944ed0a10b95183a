/*
 * faultinject: the request path's side of injected faults (README "levee dev"). Where faults
 * come from, in the order they are drawn (a kind already drawn is not drawn again):
 *
 *   1. the admin API's rules (policy/faultrules.h): a scripted scenario wins;
 *   2. the Levee-Fault header, on a route with fault.headers = true (always applied: the
 *      client asked for this request);
 *   3. the route's fault table, each kind with its percent.
 *
 * The header and the route table use the route's placement (fault.at); a rule has its own.
 * Throttle is always the client's: it is drawn once per request, with the client faults.
 */

#include <stdio.h>
#include <string.h>

#include "base/method.h"
#include "obs/accesslog.h"
#include "policy/faultrules.h"
#include "proxy/request.h"
#include "proxy/server.h"

static uint64_t rnd(void *arg)
{
    return lv_attempt_rand(arg);
}

void lv_fault_injected(struct lv_request *r, enum lv_fault_kind k)
{
    r->flags |= LV_ACCESS_FAULT;
    lv_server_count_fault(r->s, r->rs, (int)k);
}

/* Draws into `hit`, for the placement `at_client`, the kinds in `only`. */
static void draw(struct lv_request *r, bool at_client, unsigned only, struct lv_fault_hit *hit)
{
    struct lv_fault_rules *rules = &r->s->sh->faults;
    if (!lv_fault_rules_empty(rules)) {
        struct lv_fault_hit rh = {0};
        lv_fault_rules_draw(rules, r->route->name, r->method, r->target.data, r->target.len,
                            at_client, rnd, r, &rh);
        /* Throttle is the client's whatever the rule's placement; the rule fired now. */
        if (!at_client && (rh.kinds & (1u << LV_FAULT_THROTTLE)) &&
            !(r->fault_client.kinds & (1u << LV_FAULT_THROTTLE))) {
            lv_fault_hit_add(&r->fault_client, LV_FAULT_THROTTLE, rh.throttle_rate);
            lv_fault_injected(r, LV_FAULT_THROTTLE);
            r->ds->ops->throttle(r->ds, rh.throttle_rate);
        }
        for (int k = 0; k < LV_FAULT_KINDS; k++)
            if ((rh.kinds & only & (1u << k)))
                lv_fault_hit_add(hit, (enum lv_fault_kind)k,
                                 k == LV_FAULT_ABORT      ? (uint64_t)rh.abort_status
                                 : k == LV_FAULT_DELAY    ? rh.delay_ms
                                 : k == LV_FAULT_THROTTLE ? rh.throttle_rate
                                                          : 0);
    }
    const struct lv_fault_cfg *fc = &r->route->fault;
    if (!fc->enabled)
        return;
    unsigned placed = fc->at_client == at_client ? only : only & (1u << LV_FAULT_THROTTLE);
    lv_faults_draw(&r->fault_hdr, placed, rnd, r, hit);
    lv_faults_draw(&fc->f, placed, rnd, r, hit);
}

/* Levee-Fault fields, merged (a kind given twice, in one field or two, is an error). */
/* Into r->fault_hdr, cleared by the caller. */
static bool read_header(struct lv_request *r, const struct lv_reqhead *h, char *why, size_t cap)
{
    for (uint32_t i = 0; i < h->nfields; i++) {
        const struct lv_field *f = &h->fields[i];
        if (f->id != LV_FID_LEVEE_FAULT)
            continue;
        struct lv_faults one;
        if (!lv_fault_header_parse(f->value.p, f->value.len, &one, why, cap))
            return false;
        for (int k = 0; k < LV_FAULT_KINDS; k++) {
            if (!one.k[k].on)
                continue;
            if (r->fault_hdr.k[k].on) {
                snprintf(why, cap, "%s given twice", lv_fault_kind_name((enum lv_fault_kind)k));
                return false;
            }
            r->fault_hdr.k[k] = one.k[k];
        }
    }
    return true;
}

enum lv_fault_answer lv_fault_begin(struct lv_request *r, const struct lv_reqhead *h, char *why,
                                    size_t cap)
{
    memset(&r->fault_hdr, 0, sizeof(r->fault_hdr));
    const struct lv_fault_cfg *fc = &r->route->fault;
    if (fc->enabled && fc->headers && !read_header(r, h, why, cap))
        return LV_FAULT_BAD_HEADER;
    if (!fc->enabled && lv_fault_rules_empty(&r->s->sh->faults))
        return LV_FAULT_GO;
    struct lv_fault_hit *hit = &r->fault_client;
    draw(r, true, ~0u, hit);
    if (hit->kinds & (1u << LV_FAULT_THROTTLE)) {
        lv_fault_injected(r, LV_FAULT_THROTTLE);
        r->ds->ops->throttle(r->ds, hit->throttle_rate);
    }
    if (hit->kinds & (1u << LV_FAULT_DELAY))
        lv_fault_injected(r, LV_FAULT_DELAY); /* served before the first attempt */
    if (hit->kinds & (1u << LV_FAULT_ABORT)) {
        lv_fault_injected(r, LV_FAULT_ABORT);
        return LV_FAULT_ANSWER_ABORT;
    }
    if (hit->kinds & (1u << LV_FAULT_RESET)) {
        lv_fault_injected(r, LV_FAULT_RESET);
        return LV_FAULT_ANSWER_RESET;
    }
    return LV_FAULT_GO;
}

void lv_fault_answer(struct lv_request *r, enum lv_fault_answer a, const char *why)
{
    switch (a) {
    case LV_FAULT_BAD_HEADER:
        lv_request_fail(r, LV_GWERR_BAD_FAULT_HEADER, why, -1, false);
        break;
    case LV_FAULT_ANSWER_ABORT:
        r->error_status = r->fault_client.abort_status;
        lv_request_fail(r, LV_GWERR_FAULT_INJECTED, "abort", -1, false);
        break;
    case LV_FAULT_ANSWER_RESET:
        r->ds->ops->reset(r->ds); /* the request ends as the client's going: client-abort */
        break;
    case LV_FAULT_GO:
        break;
    }
}

void lv_fault_draw_attempt(struct lv_request *r)
{
    r->fault_try = (struct lv_fault_hit){0};
    if (!r->route->fault.enabled && lv_fault_rules_empty(&r->s->sh->faults))
        return;
    draw(r, false, (1u << LV_FAULT_ABORT) | (1u << LV_FAULT_DELAY) | (1u << LV_FAULT_RESET),
         &r->fault_try);
}
