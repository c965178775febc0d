/*
 * check.h: the one assertion of the C tests. CHECK counts a pass or prints
 * the failure with its place; a test's main ends with CHECK_REPORT(), which
 * prints "N passed, M failed" (the specs read that line) and gives the exit
 * status.
 */
#ifndef CHECK_H
#define CHECK_H

#include <stdio.h>

static int passed, failed;

#define CHECK(cond, ...)                                                     \
    do {                                                                     \
        if (cond) {                                                          \
            passed++;                                                        \
        } else {                                                             \
            failed++;                                                        \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                      \
            printf(__VA_ARGS__);                                             \
            printf("\n");                                                    \
        }                                                                    \
    } while (0)

#define CHECK_REPORT()                                                       \
    (printf("%d passed, %d failed\n", passed, failed), failed != 0)

#endif
