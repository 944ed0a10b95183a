/*
 * common: helpers shared by the libFuzzer targets of fuzz/. The HTTP targets run one input
 * twice or more, once as a single read and once split into pieces at offsets derived from
 * the input, emulating the server's incremental reads; each run writes a transcript of what
 * the parsers decided (verdicts, positions, parsed fields, hashes of body bytes) and the
 * transcripts must be equal. A difference, or a broken parser contract, aborts with a message.
 *
 * Buffers are allocated at their exact size (fz_bytes) so AddressSanitizer sees any read
 * past the bytes received so far, which the server's growable buffers would hide.
 */
#ifndef LV_FUZZ_COMMON_H
#define LV_FUZZ_COMMON_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Bytes received and not yet consumed, in an allocation of exactly `len` bytes. */
struct fz_bytes {
    char *p;
    size_t len;
};

void fz_bytes_append(struct fz_bytes *b, const void *data, size_t n);
void fz_bytes_consume(struct fz_bytes *b, size_t n);
void fz_bytes_free(struct fz_bytes *b);
/** A fresh allocation of exactly `n` bytes holding a copy of `data` (free() it). */
char *fz_dup(const void *data, size_t n);

/* A transcript: text lines describing what the parsers decided. */
struct fz_log {
    char *p;
    size_t len, cap;
};

void fz_logf(struct fz_log *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/** Appends " tag=len:hash'preview'" for n bytes at p (every byte is read: spans must be valid). */
void fz_log_span(struct fz_log *l, const char *tag, const char *p, size_t n);
void fz_log_free(struct fz_log *l);

uint64_t fz_hash(uint64_t h, const void *p, size_t n);
#define FZ_HASH_INIT 0xcbf29ce484222325ull

/* Offsets at which an input is cut into pieces. */
#define FZ_MAX_PIECES 16
struct fz_split {
    size_t n;                  /* pieces */
    size_t size;               /* input bytes */
    bool bytewise;             /* one byte per piece (n == size) */
    size_t end[FZ_MAX_PIECES]; /* piece k is [end[k-1], end[k]); end[n-1] == size */
};

/** One piece: the whole input. */
void fz_split_whole(struct fz_split *s, size_t size);
/** 2..FZ_MAX_PIECES pieces at pseudo-random offsets derived from the input bytes and `salt`
 *  (the same input always gives the same split, so a crash reproduces). */
void fz_split_random(struct fz_split *s, const uint8_t *data, size_t size, uint64_t salt);
/** One byte per piece. */
void fz_split_bytewise(struct fz_split *s, size_t size);
/** Piece k: offset and length. */
void fz_split_piece(const struct fz_split *s, size_t k, size_t *off, size_t *len);
/** Describes the split for a failure message. */
void fz_split_print(const struct fz_split *s);

/** Aborts when the two transcripts differ, printing the first difference, both transcripts
 *  (shortened) and the split. */
void fz_compare(const char *target, const struct fz_log *whole, const struct fz_log *split,
                const struct fz_split *how);

/** Aborts with a message: a parser broke its documented contract. */
void fz_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#endif
