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

#endif
