#include "http/resphead.h"

#include <llhttp.h>
#include <string.h>

#include "http/reqhead.h"

static int fail(struct lv_resphead *h, const char *reason)
{
    h->reason = reason;
    h->reusable = false;
    return 502;
}

int lv_resphead_parse(struct lv_resphead *h, const char *data, size_t head_len, bool head_request,
                      struct lv_field *fields, uint32_t max_fields)
{
    memset(h, 0, sizeof(*h));
    h->fields = fields;

    struct lv__llhead c = {.fields = fields, .max = max_fields};
    int e = lv__llhead_run(&c, true, data, head_len);
    h->nfields = c.n;
    h->status = c.status_code;
    h->major = c.major;
    h->minor = c.minor;
    h->reason_phrase = c.status;
    if (!h->reason_phrase.p)
        h->reason_phrase.p = "";
    unsigned conn = lv_fields_mark_hop(fields, h->nfields);

    const struct lv_field *cl = NULL, *te = NULL;
    unsigned ncl = 0, nte = 0;
    for (uint32_t i = 0; i < h->nfields; i++) {
        if (fields[i].id == LV_FID_CONTENT_LENGTH) {
            cl = &fields[i];
            ncl++;
        } else if (fields[i].id == LV_FID_TRANSFER_ENCODING) {
            te = &fields[i];
            nte++;
        }
    }
    /* Framing guards first: they name the problem better than llhttp's error does. */
    if (ncl > 1)
        return fail(h, "duplicate Content-Length in response");
    if (ncl && nte)
        return fail(h, "Content-Length with Transfer-Encoding in response");
    if (nte > 1)
        return fail(h, "more than one Transfer-Encoding field in response");
    if (cl) {
        if (lv_content_length_parse(cl->value.p, cl->value.len, &h->content_length) != 0)
            return fail(h, "invalid Content-Length in response");
        h->has_content_length = true;
    }
    if (e)
        return fail(h,
                    c.overflow ? "too many header fields in response" : "malformed response head");
    if (h->major != 1 || h->minor > 1)
        return fail(h, "unsupported HTTP version in response");
    if (h->status < 100 || h->status > 599)
        return fail(h, "status code out of range");

    bool te_eof = false, te_other = false;
    if (te) {
        struct lv_te_info ti;
        if (h->minor == 0)
            return fail(h, "Transfer-Encoding in an HTTP/1.0 response");
        if (!lv_te_parse(te->value.p, te->value.len, &ti) || ti.nchunked > 1)
            return fail(h, "invalid Transfer-Encoding in response");
        if (ti.chunked_last && ti.ncodings > 1)
            return fail(h, "transfer coding not implemented");
        h->chunked = ti.chunked_last;
        te_eof = !ti.chunked_last;
        te_other = ti.ncodings != 1 || !ti.chunked_last;
    }
    if (((c.flags & F_CHUNKED) != 0) != h->chunked ||
        ((c.flags & F_CONTENT_LENGTH) != 0) != h->has_content_length ||
        (h->has_content_length && c.content_length != h->content_length))
        return fail(h, "ambiguous response framing");

    if (h->minor == 1)
        h->keep_alive = !(conn & LV_CONN_CLOSE);
    else
        h->keep_alive = (conn & LV_CONN_KEEP_ALIVE) && !(conn & LV_CONN_CLOSE);

    h->body = LV_BODY_NONE;
    if (h->status == 101) {
        h->upgrade = true; /* the connection now speaks another protocol, or is closed */
        return 0;
    }
    if (h->status < 200) {
        h->interim = true; /* 1xx has no body whatever its headers say (R8) */
        return 0;
    }
    if (head_request || h->status == 204 || h->status == 304) {
        h->reusable = h->keep_alive;
        /* A 204/304 announcing a body may well send one: those bytes would be read as the
         * next response on a pooled connection (R5). */
        if (!head_request && (te || (h->has_content_length && h->content_length > 0)))
            h->reusable = false;
        return 0;
    }
    /* We never send TE, so a transfer coding other than chunked (gzip, identity...) on a body
     * breaks the protocol; passing it on would hand the client bytes it cannot decode. */
    if (te_other)
        return fail(h, "unrequested transfer coding in response");
    if (h->chunked) {
        h->body = LV_BODY_CHUNKED;
        h->reusable = h->keep_alive;
    } else if (h->has_content_length && !te_eof) {
        h->body = LV_BODY_LENGTH;
        h->reusable = h->keep_alive;
    } else {
        h->body = LV_BODY_EOF; /* R4, R17: delimited by close, never pooled */
        h->reusable = false;
    }
    return 0;
}
