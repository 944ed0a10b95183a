/* base/method: the named method constants match the numbers the name lookup returns. */
#include "base/method.h"

#include <string.h>

#include "t.h"

#define S(s) s, strlen(s)

T_TEST(constants_match_names)
{
    T_CHECK_INT(lv_method_from_name(S("DELETE")), LV_METHOD_DELETE);
    T_CHECK_INT(lv_method_from_name(S("GET")), LV_METHOD_GET);
    T_CHECK_INT(lv_method_from_name(S("HEAD")), LV_METHOD_HEAD);
    T_CHECK_INT(lv_method_from_name(S("POST")), LV_METHOD_POST);
    T_CHECK_INT(lv_method_from_name(S("PUT")), LV_METHOD_PUT);
    T_CHECK_INT(lv_method_from_name(S("CONNECT")), LV_METHOD_CONNECT);
    T_CHECK_INT(lv_method_from_name(S("OPTIONS")), LV_METHOD_OPTIONS);
    T_CHECK_INT(lv_method_from_name(S("TRACE")), LV_METHOD_TRACE);
    T_CHECK_INT(lv_method_from_name(S("M-SEARCH")), LV_METHOD_M_SEARCH);
    T_CHECK_INT(lv_method_from_name(S("PATCH")), LV_METHOD_PATCH);
    T_CHECK_INT(lv_method_from_name(S("SOURCE")), LV_METHOD_SOURCE);
    T_CHECK_STR(lv_method_name(LV_METHOD_HEAD), "HEAD");
    T_CHECK_STR(lv_method_name(LV_METHOD__COUNT), "?");
    T_CHECK_STR(lv_method_name(-1), "?");
    /* Every number below the count has a name that maps back to it. */
    for (int m = 0; m < LV_METHOD__COUNT; m++) {
        const char *n = lv_method_name(m);
        T_CHECK_INT(lv_method_from_name(n, strlen(n)), m);
    }
}

T_TEST(idempotent_set)
{
    int yes[] = {LV_METHOD_GET,    LV_METHOD_HEAD,    LV_METHOD_PUT,
                 LV_METHOD_DELETE, LV_METHOD_OPTIONS, LV_METHOD_TRACE};
    int n = 0;
    for (int m = 0; m < LV_METHOD__COUNT; m++)
        n += lv_method_idempotent(m);
    T_CHECK_INT(n, 6);
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++)
        T_CHECK(lv_method_idempotent(yes[i]));
    T_CHECK(!lv_method_idempotent(LV_METHOD_POST));
    T_CHECK(!lv_method_idempotent(LV_METHOD_PATCH));
}

int main(void)
{
    T_RUN(constants_match_names);
    T_RUN(idempotent_set);
    T_DONE();
}
