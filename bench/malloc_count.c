/*
 * LD_PRELOAD library that counts calls to malloc, calloc and realloc, each
 * attributed to the shared object that called it (memcached.so, the Lua
 * interpreter, libmsgpackc, libc...). Lua's allocator is realloc, so every
 * Lua allocation shows up under the interpreter; the C side of this library
 * shows up under memcached.so and libmsgpackc.
 *
 * At exit it writes "total N" and then "OBJECT N" lines to the file named by
 * MALLOC_COUNT_FILE, or to stderr when that is unset.
 *
 * Build: cc -O2 -fPIC -shared -o malloc_count.so malloc_count.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* glibc's real allocator, exported under these names: calling them avoids
 * dlsym(RTLD_NEXT), which itself allocates while we are being set up. */
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);

#define NOBJ 32
#define NCACHE 4096

static struct {
    const void *base; /* dli_fbase of the object; NULL = unknown caller */
    char name[96];
    unsigned long count;
} objs[NOBJ];
static int nobj;
static unsigned long total;

/* Return address -> object index: dladdr is far too slow to run on every
 * call of a Lua loop, and the same few call sites repeat. */
static struct {
    const void *ret;
    int obj;
} cache[NCACHE];

static __thread int inside; /* dladdr must not count itself */

static int object_of(const void *ret)
{
    Dl_info info;
    const void *base = NULL;
    const char *name = "?";
    int i;
    if (dladdr(ret, &info) && info.dli_fname) {
        base = info.dli_fbase;
        name = strrchr(info.dli_fname, '/') ? strrchr(info.dli_fname, '/') + 1
                                            : info.dli_fname;
        if (!*name)
            name = "(main program)";
    }
    for (i = 0; i < nobj; i++)
        if (objs[i].base == base)
            return i;
    if (nobj == NOBJ)
        return NOBJ - 1; /* overflow: lump the rest together */
    objs[nobj].base = base;
    snprintf(objs[nobj].name, sizeof(objs[nobj].name), "%s", name);
    return nobj++;
}

static void count(const void *ret)
{
    size_t h;
    int o;
    total++;
    if (inside)
        return;
    inside = 1;
    h = ((uintptr_t)ret >> 2) % NCACHE;
    if (cache[h].ret == ret) {
        o = cache[h].obj;
    } else {
        o = object_of(ret);
        cache[h].ret = ret;
        cache[h].obj = o;
    }
    objs[o].count++;
    inside = 0;
}

void *malloc(size_t n)
{
    count(__builtin_return_address(0));
    return __libc_malloc(n);
}

void *calloc(size_t n, size_t m)
{
    count(__builtin_return_address(0));
    return __libc_calloc(n, m);
}

void *realloc(void *p, size_t n)
{
    count(__builtin_return_address(0));
    return __libc_realloc(p, n);
}

__attribute__((destructor)) static void report(void)
{
    char line[160];
    const char *path = getenv("MALLOC_COUNT_FILE");
    int fd = path ? open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644) : 2;
    int i, n;
    if (fd < 0)
        return;
    n = snprintf(line, sizeof(line), "total %lu\n", total);
    if (write(fd, line, (size_t)n) < 0)
        return;
    for (i = 0; i < nobj; i++) {
        n = snprintf(line, sizeof(line), "%s %lu\n", objs[i].name, objs[i].count);
        if (write(fd, line, (size_t)n) < 0)
            return;
    }
    if (fd != 2)
        close(fd);
}
