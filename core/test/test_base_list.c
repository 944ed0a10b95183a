/* base/list: the intrusive list every queue of net/ and store/ is built on. */
#include "base/list.h"

#include "t.h"

struct item {
    int v;
    struct lv_dlist link;
};

static int values(struct lv_dlist *h, int *out, int max)
{
    int n = 0;
    struct lv_dlist *l, *nx;
    lv_dlist_foreach_safe(l, nx, h)
    {
        if (n < max)
            out[n] = lv_dlist_entry(l, struct item, link)->v;
        n++;
    }
    return n;
}

T_TEST(empty_list)
{
    struct lv_dlist h;
    lv_dlist_init(&h);
    T_CHECK(lv_dlist_empty(&h));
    T_CHECK(lv_dlist_first(&h) == NULL);
    T_CHECK(!lv_dlist_linked(&h));
    int v[1];
    T_CHECK_INT(values(&h, v, 1), 0);
}

T_TEST(append_is_fifo_push_is_lifo)
{
    struct lv_dlist h;
    lv_dlist_init(&h);
    struct item it[3] = {{.v = 1}, {.v = 2}, {.v = 3}};
    for (int i = 0; i < 3; i++)
        lv_dlist_append(&h, &it[i].link);
    int v[4];
    T_CHECK_INT(values(&h, v, 4), 3);
    T_CHECK(v[0] == 1 && v[1] == 2 && v[2] == 3);
    T_CHECK(lv_dlist_entry(lv_dlist_first(&h), struct item, link) == &it[0]);

    struct lv_dlist g;
    lv_dlist_init(&g);
    struct item jt[3] = {{.v = 1}, {.v = 2}, {.v = 3}};
    for (int i = 0; i < 3; i++)
        lv_dlist_push(&g, &jt[i].link);
    T_CHECK_INT(values(&g, v, 4), 3);
    T_CHECK(v[0] == 3 && v[1] == 2 && v[2] == 1);
}

T_TEST(remove_leaves_unlinked_and_is_idempotent)
{
    struct lv_dlist h;
    lv_dlist_init(&h);
    struct item it[3] = {{.v = 1}, {.v = 2}, {.v = 3}};
    for (int i = 0; i < 3; i++)
        lv_dlist_append(&h, &it[i].link);
    T_CHECK(lv_dlist_linked(&it[1].link));
    lv_dlist_remove(&it[1].link);
    T_CHECK(!lv_dlist_linked(&it[1].link));
    lv_dlist_remove(&it[1].link); /* twice: harmless */
    int v[4];
    T_CHECK_INT(values(&h, v, 4), 2);
    T_CHECK(v[0] == 1 && v[1] == 3);
    /* An unlinked element can go on a list again. */
    lv_dlist_push(&h, &it[1].link);
    T_CHECK_INT(values(&h, v, 4), 3);
    T_CHECK(v[0] == 2 && v[1] == 1 && v[2] == 3);
    lv_dlist_remove(&it[0].link);
    lv_dlist_remove(&it[1].link);
    lv_dlist_remove(&it[2].link);
    T_CHECK(lv_dlist_empty(&h));
}

T_TEST(foreach_safe_allows_removing_the_current)
{
    struct lv_dlist h;
    lv_dlist_init(&h);
    struct item it[5];
    for (int i = 0; i < 5; i++) {
        it[i] = (struct item){.v = i};
        lv_dlist_append(&h, &it[i].link);
    }
    struct lv_dlist *l, *n;
    lv_dlist_foreach_safe(l, n, &h)
    {
        if (lv_dlist_entry(l, struct item, link)->v % 2 == 0)
            lv_dlist_remove(l);
    }
    int v[5];
    T_CHECK_INT(values(&h, v, 5), 2);
    T_CHECK(v[0] == 1 && v[1] == 3);
}

T_TEST(splice_moves_everything_in_order)
{
    struct lv_dlist a, b;
    lv_dlist_init(&a);
    lv_dlist_init(&b);
    struct item it[4] = {{.v = 1}, {.v = 2}, {.v = 3}, {.v = 4}};
    lv_dlist_append(&a, &it[0].link);
    lv_dlist_append(&b, &it[1].link);
    lv_dlist_append(&b, &it[2].link);
    lv_dlist_splice(&a, &b);
    T_CHECK(lv_dlist_empty(&b));
    lv_dlist_append(&a, &it[3].link);
    int v[5];
    T_CHECK_INT(values(&a, v, 5), 4);
    T_CHECK(v[0] == 1 && v[1] == 2 && v[2] == 3 && v[3] == 4);
    /* Backwards links are right too. */
    T_CHECK(a.prev == &it[3].link && it[3].link.prev == &it[2].link &&
            it[1].link.prev == &it[0].link && it[0].link.prev == &a);
    /* Splicing an empty list changes nothing; into an empty one moves all. */
    lv_dlist_splice(&a, &b);
    T_CHECK_INT(values(&a, v, 5), 4);
    lv_dlist_splice(&b, &a);
    T_CHECK(lv_dlist_empty(&a));
    T_CHECK_INT(values(&b, v, 5), 4);
    T_CHECK(v[0] == 1 && v[3] == 4 && b.prev == &it[3].link);
}

int main(void)
{
    T_RUN(empty_list);
    T_RUN(append_is_fifo_push_is_lifo);
    T_RUN(remove_leaves_unlinked_and_is_idempotent);
    T_RUN(foreach_safe_allows_removing_the_current);
    T_RUN(splice_moves_everything_in_order);
    T_DONE();
}
