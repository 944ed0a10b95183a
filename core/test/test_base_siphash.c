#include "base/siphash.h"
#include "t.h"

/* The reference implementation's vectors: key 00 01 .. 0f, message 00 01 .. (len - 1). */
T_TEST(reference_vectors)
{
    uint64_t k[2] = {0x0706050403020100ULL, 0x0f0e0d0c0b0a0908ULL};
    uint8_t msg[16];
    for (int i = 0; i < 16; i++)
        msg[i] = (uint8_t)i;
    T_CHECK(lv_siphash64(k, msg, 0) == 0x726fdb47dd0e0e31ULL);
    T_CHECK(lv_siphash64(k, msg, 15) == 0xa129ca6149be45e5ULL);
    uint64_t out[2];
    lv_siphash128(k, msg, 0, out);
    T_CHECK(out[0] == 0xe6a825ba047f81a3ULL && out[1] == 0x930255c71472f66dULL);
}

int main(void)
{
    T_RUN(reference_vectors);
    T_DONE();
}
