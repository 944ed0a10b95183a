/*
 * iobufs: vectors of uv_buf_t, as the writers of the proxy hand them to a socket: their total
 * length, and a copy of what a partial write left (a write goes straight to the socket when
 * nothing is queued; only the rest is copied into a queued write).
 */
#ifndef LV_NET_IOBUFS_H
#define LV_NET_IOBUFS_H

#include <stddef.h>
#include <string.h>
#include <uv.h>

#include "base/buf.h"

static inline size_t lv_iobufs_total(const uv_buf_t *bufs, unsigned n)
{
    size_t total = 0;
    for (unsigned i = 0; i < n; i++)
        total += bufs[i].len;
    return total;
}

/** Copies the bytes of bufs[0..n) after the first `skip` into `dst`; returns how many. */
static inline size_t lv_iobufs_copy_after(char *dst, const uv_buf_t *bufs, unsigned n, size_t skip)
{
    size_t off = 0;
    for (unsigned i = 0; i < n; i++) {
        size_t len = bufs[i].len;
        if (skip >= len) {
            skip -= len;
            continue;
        }
        memcpy(dst + off, bufs[i].base + skip, len - skip);
        off += len - skip;
        skip = 0;
    }
    return off;
}

/* A queued write of a copy: the request, then the bytes. */
struct lv_iobufs_wreq {
    uv_write_t req;
    char data[];
};

/**
 * Writes bufs[0..n) to `s`: straight to the socket when nothing is queued there (no epoll
 * re-arm), and what that left, or all of it, as one queued write of a copy. The queued
 * write's request carries `data` in req->data; `cb` must free(req) (it is the allocation).
 * Returns 0, or a negative libuv error when the socket broke.
 */
static inline int lv_iobufs_write(uv_stream_t *s, const uv_buf_t *bufs, unsigned n, uv_write_cb cb,
                                  void *data)
{
    size_t total = lv_iobufs_total(bufs, n), done = 0;
    if (total == 0)
        return 0;
    if (uv_stream_get_write_queue_size(s) == 0) {
        int rc = uv_try_write(s, bufs, n);
        if (rc < 0 && rc != UV_EAGAIN)
            return rc;
        if (rc > 0)
            done = (size_t)rc;
        if (done == total)
            return 0;
    }
    struct lv_iobufs_wreq *w = lv_xmalloc(sizeof(*w) + total - done);
    w->req.data = data;
    uv_buf_t b = uv_buf_init(w->data, (unsigned)lv_iobufs_copy_after(w->data, bufs, n, done));
    int rc = uv_write(&w->req, s, &b, 1, cb);
    if (rc < 0)
        free(w);
    return rc;
}

#endif
