/*
 * siphash: SipHash-2-4, the keyed hash of hash tables whose keys come from clients (an
 * idempotency key, a rate-limit key): with a random key per table, nobody can choose keys
 * that collide. 64-bit and 128-bit outputs (the reference's two variants).
 */
#ifndef LV_BASE_SIPHASH_H
#define LV_BASE_SIPHASH_H

#include <stddef.h>
#include <stdint.h>

/** SipHash-2-4 of `data` under key k (16 bytes as two little-endian words). */
uint64_t lv_siphash64(const uint64_t k[2], const void *data, size_t len);
/** SipHash-2-4-128: two words of output. */
void lv_siphash128(const uint64_t k[2], const void *data, size_t len, uint64_t out[2]);

#endif
