#include "policy/outcome.h"
#include "t.h"

static void set_status(uint64_t map[10], int s)
{
    map[s / 64] |= (uint64_t)1 << (s % 64);
}

T_TEST(names_round_trip)
{
    T_CHECK_STR(lv_outcome_name(LV_OUT_CONNECT_FAILURE), "connect-failure");
    T_CHECK_STR(lv_outcome_name(LV_OUT_RESET), "reset");
    T_CHECK_STR(lv_outcome_name(LV_OUT_TIMEOUT), "timeout");
    T_CHECK_STR(lv_outcome_name(LV_OUT_PROTOCOL_ERROR), "protocol-error");
    T_CHECK_STR(lv_outcome_name(LV_OUT_STATUS), "status");
    T_CHECK_STR(lv_outcome_name(LV_OUT_NONE), "none");
    T_CHECK_STR(lv_outcome_name((enum lv_outcome_kind)99), "?");
    for (int k = LV_OUT_CONNECT_FAILURE; k <= LV_OUT_PROTOCOL_ERROR; k++) {
        const char *n = lv_outcome_name((enum lv_outcome_kind)k);
        T_CHECK_INT(lv_outcome_from_name(n, strlen(n)), k);
    }
    /* only the four error names parse; lengths are honoured, case matters */
    T_CHECK_INT(lv_outcome_from_name("status", 6), LV_OUT_NONE);
    T_CHECK_INT(lv_outcome_from_name("none", 4), LV_OUT_NONE);
    T_CHECK_INT(lv_outcome_from_name("Reset", 5), LV_OUT_NONE);
    T_CHECK_INT(lv_outcome_from_name("resetx", 5), LV_OUT_RESET);
    T_CHECK_INT(lv_outcome_from_name("reset", 4), LV_OUT_NONE);
    T_CHECK_INT(lv_outcome_from_name("", 0), LV_OUT_NONE);
    T_CHECK_INT(lv_outcome_from_name(NULL, 0), LV_OUT_NONE);

    T_CHECK_STR(lv_verdict_name(LV_VERDICT_NONE), "none");
    T_CHECK_STR(lv_verdict_name(LV_VERDICT_OK), "ok");
    T_CHECK_STR(lv_verdict_name(LV_VERDICT_FAIL), "fail");
    T_CHECK_STR(lv_verdict_name(LV_VERDICT_RETRY), "retry");
    T_CHECK_INT(lv_verdict_from_name("ok", 2), LV_VERDICT_OK);
    T_CHECK_INT(lv_verdict_from_name("fail", 4), LV_VERDICT_FAIL);
    T_CHECK_INT(lv_verdict_from_name("retry", 5), LV_VERDICT_RETRY);
    T_CHECK_INT(lv_verdict_from_name("none", 4), LV_VERDICT_NONE);
    T_CHECK_INT(lv_verdict_from_name("OK", 2), LV_VERDICT_NONE);
    T_CHECK_INT(lv_verdict_from_name("retry", 4), LV_VERDICT_NONE);
}

T_TEST(error_bits_match_config)
{
    /* config.h's LV_RETRY_ON_* values, restated: this layer may not include script/ */
    T_CHECK_INT(lv_outcome_error_bit(LV_OUT_CONNECT_FAILURE), 1);
    T_CHECK_INT(lv_outcome_error_bit(LV_OUT_RESET), 2);
    T_CHECK_INT(lv_outcome_error_bit(LV_OUT_TIMEOUT), 4);
    T_CHECK_INT(lv_outcome_error_bit(LV_OUT_PROTOCOL_ERROR), 8);
    T_CHECK_INT(lv_outcome_error_bit(LV_OUT_STATUS), 0);
    T_CHECK_INT(lv_outcome_error_bit(LV_OUT_NONE), 0);
}

T_TEST(verdict_failure)
{
    T_CHECK(!lv_verdict_is_failure(LV_VERDICT_NONE));
    T_CHECK(!lv_verdict_is_failure(LV_VERDICT_OK));
    T_CHECK(lv_verdict_is_failure(LV_VERDICT_FAIL));
    T_CHECK(lv_verdict_is_failure(LV_VERDICT_RETRY));
}

T_TEST(classify_default_table)
{
    uint64_t on[10] = {0};
    set_status(on, 502);
    set_status(on, 503);
    set_status(on, 504);
    set_status(on, 429);
    uint32_t errs = 1 | 2; /* connect-failure, reset: the default retry.on */
    static const struct {
        enum lv_outcome_kind kind;
        int status;
        enum lv_verdict want;
    } cases[] = {
        {LV_OUT_STATUS, 200, LV_VERDICT_OK},
        {LV_OUT_STATUS, 204, LV_VERDICT_OK},
        {LV_OUT_STATUS, 304, LV_VERDICT_OK},
        {LV_OUT_STATUS, 404, LV_VERDICT_OK},
        {LV_OUT_STATUS, 409, LV_VERDICT_OK},
        {LV_OUT_STATUS, 429, LV_VERDICT_RETRY},
        {LV_OUT_STATUS, 499, LV_VERDICT_OK},
        {LV_OUT_STATUS, 500, LV_VERDICT_FAIL},
        {LV_OUT_STATUS, 501, LV_VERDICT_FAIL},
        {LV_OUT_STATUS, 502, LV_VERDICT_RETRY},
        {LV_OUT_STATUS, 503, LV_VERDICT_RETRY},
        {LV_OUT_STATUS, 504, LV_VERDICT_RETRY},
        {LV_OUT_STATUS, 505, LV_VERDICT_FAIL},
        {LV_OUT_STATUS, 599, LV_VERDICT_FAIL},
        {LV_OUT_STATUS, 600, LV_VERDICT_OK},
        {LV_OUT_STATUS, 999, LV_VERDICT_OK},
        {LV_OUT_STATUS, -1, LV_VERDICT_OK},
        {LV_OUT_STATUS, 100, LV_VERDICT_OK},
        {LV_OUT_CONNECT_FAILURE, 0, LV_VERDICT_RETRY},
        {LV_OUT_RESET, 0, LV_VERDICT_RETRY},
        {LV_OUT_TIMEOUT, 0, LV_VERDICT_FAIL},
        {LV_OUT_PROTOCOL_ERROR, 0, LV_VERDICT_FAIL},
        {LV_OUT_NONE, 0, LV_VERDICT_NONE},
        {LV_OUT_NONE, 502, LV_VERDICT_NONE},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct lv_outcome o = {cases[i].kind, cases[i].status};
        enum lv_verdict got = lv_classify_default(errs, on, o);
        if (got != cases[i].want)
            fprintf(stderr, "case %zu: %s %d\n", i, lv_outcome_name(o.kind), o.status);
        T_CHECK_INT(got, cases[i].want);
    }
}

T_TEST(classify_default_each_error_bit)
{
    uint64_t none[10] = {0};
    for (int k = LV_OUT_CONNECT_FAILURE; k <= LV_OUT_PROTOCOL_ERROR; k++) {
        struct lv_outcome o = {(enum lv_outcome_kind)k, 0};
        uint32_t bit = lv_outcome_error_bit(o.kind);
        T_CHECK_INT(lv_classify_default(bit, none, o), LV_VERDICT_RETRY);
        T_CHECK_INT(lv_classify_default(0xf & ~bit, none, o), LV_VERDICT_FAIL);
        T_CHECK_INT(lv_classify_default(0, none, o), LV_VERDICT_FAIL);
    }
    /* an error never matches a status bit, and a status never matches an error bit */
    uint64_t all[10];
    memset(all, 0xff, sizeof(all));
    T_CHECK_INT(lv_classify_default(0, all, (struct lv_outcome){LV_OUT_RESET, 502}),
                LV_VERDICT_FAIL);
    T_CHECK_INT(lv_classify_default(0xf, none, (struct lv_outcome){LV_OUT_STATUS, 503}),
                LV_VERDICT_FAIL);
}

T_TEST(classify_default_every_status)
{
    /* with a map holding only s, exactly s retries; the rest follows the 5xx rule */
    for (int s = 100; s < 640; s++) {
        uint64_t on[10] = {0};
        set_status(on, s);
        for (int q = 100; q < 640; q++) {
            enum lv_verdict want = q == s                ? LV_VERDICT_RETRY
                                   : q >= 500 && q < 600 ? LV_VERDICT_FAIL
                                                         : LV_VERDICT_OK;
            enum lv_verdict got = lv_classify_default(0, on, (struct lv_outcome){LV_OUT_STATUS, q});
            if (got != want) {
                T_CHECK_INT(got, want);
                return;
            }
        }
    }
    T_CHECK(lv_status_in((const uint64_t[10]){[9] = (uint64_t)1 << 63}, 639));
    T_CHECK(!lv_status_in((const uint64_t[10]){[9] = ~(uint64_t)0}, 640));
}

int main(void)
{
    T_RUN(names_round_trip);
    T_RUN(error_bits_match_config);
    T_RUN(verdict_failure);
    T_RUN(classify_default_table);
    T_RUN(classify_default_each_error_bit);
    T_RUN(classify_default_every_status);
    T_DONE();
}
