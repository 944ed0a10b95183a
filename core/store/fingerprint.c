/*
 * Request fingerprint for idempotency keys: SHA-256 through OpenSSL's EVP interface. The
 * body is digested as it streams, so a request body is never held whole for this. Method
 * and target are length-framed so ("POST", "/ab") and ("POST", "/a") + "b..." never collide.
 */
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

#include "store/idem.h"

static void must(int ok)
{
    /* SHA-256 with the default provider cannot fail short of memory exhaustion. */
    if (!ok)
        abort();
}

static void put_len(EVP_MD_CTX *md, size_t n)
{
    uint8_t b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(n >> (56 - 8 * i));
    must(EVP_DigestUpdate(md, b, sizeof(b)));
}

void lv_idem_fp_init(struct lv_idem_fp *fp, const char *method, size_t mlen, const char *target,
                     size_t tlen)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!md)
        abort();
    unsigned int n = 0;
    must(EVP_DigestInit_ex(md, EVP_sha256(), NULL));
    put_len(md, mlen);
    must(EVP_DigestUpdate(md, method, mlen));
    put_len(md, tlen);
    must(EVP_DigestUpdate(md, target, tlen));
    must(EVP_DigestFinal_ex(md, fp->head, &n));
    /* The same context now digests the body. */
    must(EVP_DigestInit_ex(md, EVP_sha256(), NULL));
    fp->md = md;
}

void lv_idem_fp_update(struct lv_idem_fp *fp, const void *chunk, size_t n)
{
    if (n > 0)
        must(EVP_DigestUpdate(fp->md, chunk, n));
}

void lv_idem_fp_final(struct lv_idem_fp *fp, uint8_t out[LV_IDEM_FP_LEN])
{
    static const char tag[] = "levee-idem-1";
    uint8_t body[LV_IDEM_FP_LEN];
    unsigned int n = 0;
    EVP_MD_CTX *md = fp->md;
    must(EVP_DigestFinal_ex(md, body, &n));
    must(EVP_DigestInit_ex(md, EVP_sha256(), NULL));
    must(EVP_DigestUpdate(md, tag, sizeof(tag))); /* the NUL included */
    must(EVP_DigestUpdate(md, fp->head, sizeof(fp->head)));
    must(EVP_DigestUpdate(md, "", 1));
    must(EVP_DigestUpdate(md, body, sizeof(body)));
    must(EVP_DigestFinal_ex(md, out, &n));
    EVP_MD_CTX_free(md);
    fp->md = NULL;
}

void lv_idem_fp_dispose(struct lv_idem_fp *fp)
{
    EVP_MD_CTX_free(fp->md);
    fp->md = NULL;
}

void lv_idem_fingerprint(const char *method, size_t mlen, const char *target, size_t tlen,
                         const void *body, size_t blen, uint8_t out[LV_IDEM_FP_LEN])
{
    struct lv_idem_fp fp;
    lv_idem_fp_init(&fp, method, mlen, target, tlen);
    lv_idem_fp_update(&fp, body, blen);
    lv_idem_fp_final(&fp, out);
}
