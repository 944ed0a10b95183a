
#include <stdio.h>

#include "base/method.h"
#include "http/respwrite.h"
#include "proxy/errresp.h"
#include "proxy/request.h"
#include "proxy/server.h"
#include "conf/config.h"

/* Pieces at least this long are referenced, not copied (below it a copy is cheaper). */
#define LV_CPIECE_MIN 2048

void lv_respout_error_format(struct lv_request *r, enum lv_gwerr err, const char *detail,
                             int retry_after)
{
    const struct lv_gwerr_info *e = lv_gwerr_info(err);
    r->status = r->error_status ? r->error_status : e->status;
    r->error_token = e->token;
    /* Unread request body means the framing of what follows is unknown: close. */
    if (!r->body_done)
        r->resp_close = true;
    lv_buf_reset(&r->out);
    lv_errresp_format(&r->out, err, r->error_status, r->route ? r->route->name : NULL, r->rid,
                      detail, retry_after, &r->resp_extra, r->resp_close || !r->client_keep_alive,
                      r->method == LV_METHOD_HEAD);
    r->bytes_out += r->out.len;
    r->head_sent = true;
}

void lv_respout_error(struct lv_request *r, enum lv_gwerr err, const char *detail, int retry_after)
{
    lv_respout_error_format(r, err, detail, retry_after);
    lv_ds_write(r->ds, r->out.data, r->out.len);
}

static void write_head(struct lv_request *r, const struct lv_resphead *h, bool no_body)
{
    struct lv_buf *o = &r->cout;
    size_t start = o->len;
    lv_respwrite_begin(o, h->status, h->reason_phrase.p, h->reason_phrase.len);
    lv_respwrite_e2e(o, h->fields, h->nfields);
    if (r->resp_extra.len && h->status >= 200)
        lv_buf_append(o, r->resp_extra.data, r->resp_extra.len);
    struct lv_resp_tail t = {.request_id = r->rid};
    if (h->status == 101) { /* the switch (a tunnel follows): the hop-by-hop pair goes on */
        lv_respwrite_fieldz(o, "Connection", "upgrade");
        for (uint32_t i = 0; i < h->nfields; i++)
            if (h->fields[i].id == LV_FID_UPGRADE)
                lv_respwrite_field(o, "Upgrade", 7, h->fields[i].value.p, h->fields[i].value.len);
    }
    if (h->status >= 200) {
        if (no_body) {
            /* HEAD and 304 keep the length the upstream announced; 204 has none. */
            if (h->has_content_length && h->status != 204) {
                t.framing = LV_FRAMING_LENGTH;
                t.length = h->content_length;
            }
        } else if (h->body == LV_BODY_LENGTH) {
            t.framing = LV_FRAMING_LENGTH;
            t.length = h->content_length;
        } else if (!r->http10) {
            t.framing = LV_FRAMING_CHUNKED;
            r->resp_rechunk = true;
        } else {
            r->resp_close = true; /* HTTP/1.0 client: the body ends at close */
        }
        bool close = r->resp_close || !r->client_keep_alive || r->s->draining;
        if (close) {
            r->resp_close = true;
            t.connection = LV_CONNHDR_CLOSE;
        } else if (r->http10) {
            t.connection = LV_CONNHDR_KEEP_ALIVE;
        }
    }
    lv_respwrite_end(o, &t);
    r->bytes_out += o->len - start;
}

void lv_respout_head(struct lv_request *r, const struct lv_resphead *h)
{
    r->resp_rechunk = false;
    write_head(r, h, h->body == LV_BODY_NONE);
}

void lv_respout_interim(struct lv_request *r, const struct lv_resphead *h)
{
    if (!r->http10 && h->status != 100)
        write_head(r, h, true);
}

/* Closes the cout range not yet in cpieces, so a pointer piece can follow it. */
static void cout_mark(struct lv_request *r)
{
    if (r->cout.len > r->cout_marked) {
        r->cpieces[r->ncpieces++] =
            (struct lv_cpiece){NULL, r->cout_marked, r->cout.len - r->cout_marked};
        r->cout_marked = r->cout.len;
    }
}

void lv_respout_materialize(struct lv_request *r)
{
    if (r->ncpieces == 0)
        return;
    cout_mark(r);
    struct lv_buf all = LV_BUF_INIT;
    for (unsigned i = 0; i < r->ncpieces; i++) {
        const struct lv_cpiece *pc = &r->cpieces[i];
        lv_buf_append(&all, pc->p ? pc->p : r->cout.data + pc->off, pc->len);
    }
    lv_buf_dispose(&r->cout);
    r->cout = all;
    r->ncpieces = 0;
    r->cout_marked = 0;
}

void lv_respout_data(struct lv_request *r, const char *p, size_t n)
{
    size_t start = r->cout.len;
    if (r->resp_rechunk)
        lv_buf_printf(&r->cout, "%zx\r\n", n);
    /* By reference only while the bytes outlive the write: not for keyed requests, whose
     * last bytes may wait for the store after this read returns. */
    bool by_ref = n >= LV_CPIECE_MIN && !lv_idem_filter_locked(&r->idem) &&
                  r->ncpieces + 3 <= LV_CPIECES_MAX; /* mark, piece, the next mark */
    if (by_ref) {
        cout_mark(r);
        r->cpieces[r->ncpieces++] = (struct lv_cpiece){p, 0, n};
        r->bytes_out += n;
    } else {
        lv_buf_append(&r->cout, p, n);
    }
    if (r->resp_rechunk)
        lv_buf_append(&r->cout, "\r\n", 2);
    lv_idem_filter_capture_body(r, p, n);
    r->bytes_out += r->cout.len - start;
}

void lv_respout_end(struct lv_request *r)
{
    if (r->resp_rechunk) {
        lv_buf_append(&r->cout, "0\r\n\r\n", 5);
        r->bytes_out += 5;
    }
}

void lv_respout_flush(struct lv_request *r)
{
    if (lv_request_active(r) && lv_idem_filter_settling(&r->idem)) {
        lv_respout_materialize(r);
        return; /* the last bytes wait for the idempotency store (see lv_request_finish) */
    }
    if (r->ncpieces) {
        cout_mark(r);
        uv_buf_t bufs[LV_CPIECES_MAX];
        for (unsigned i = 0; i < r->ncpieces; i++) {
            const struct lv_cpiece *pc = &r->cpieces[i];
            bufs[i] =
                uv_buf_init((char *)(pc->p ? pc->p : r->cout.data + pc->off), (unsigned)pc->len);
        }
        unsigned n = r->ncpieces;
        r->ncpieces = 0;
        r->cout_marked = 0;
        r->cout.len = 0;
        r->ds->ops->writev(r->ds, bufs, n); /* copies only what the socket did not take */
        return;
    }
    if (r->cout.len)
        r->ds->ops->write_buf(r->ds, &r->cout);
}
