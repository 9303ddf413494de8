/* The C heap's peak, for `aiot bench edge`: where mbedTLS allocates on the
 * unix port (the MicroPython heap holds only the Python objects around it).
 *
 *   cc -shared -fPIC -O2 -o malloc_peak.so malloc_peak.c -ldl
 *   LD_PRELOAD=./malloc_peak.so micropython script.py
 *
 * Counts the usable size of every block malloc, calloc, realloc and the
 * aligned allocators hand out, minus what free returns, in the whole process
 * (the unix port here is a CPython extension: CPython is idle meanwhile).
 * The script reads it through getenv, which needs no module the port lacks:
 *   os.getenv("MALLOC_PEAK_MARK")  starts counting from here: "0 0"
 *   os.getenv("MALLOC_PEAK_READ")  "<peak> <in use>" in bytes since the mark
 * Any other name is the real getenv. Not counted: malloc's own chunk headers,
 * the C stack, static data.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <malloc.h>
#include <stdio.h>
#include <string.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

static long cur, peak, mark;

static void *add(void *p) {
    if (p) {
        long c = __atomic_add_fetch(&cur, (long)malloc_usable_size(p), __ATOMIC_RELAXED);
        if (c > peak) peak = c;
    }
    return p;
}

static void sub(void *p) {
    if (p) __atomic_sub_fetch(&cur, (long)malloc_usable_size(p), __ATOMIC_RELAXED);
}

void *malloc(size_t n) { return add(__libc_malloc(n)); }
void *calloc(size_t k, size_t n) { return add(__libc_calloc(k, n)); }
void free(void *p) { sub(p); __libc_free(p); }
void *memalign(size_t a, size_t n) { return add(__libc_memalign(a, n)); }
void *aligned_alloc(size_t a, size_t n) { return add(__libc_memalign(a, n)); }
int posix_memalign(void **out, size_t a, size_t n) {
    void *p = add(__libc_memalign(a, n));
    if (!p) return 12;
    *out = p;
    return 0;
}
void *realloc(void *q, size_t n) {
    long old = q ? (long)malloc_usable_size(q) : 0;
    void *p = __libc_realloc(q, n);
    if (p || n == 0) {
        __atomic_sub_fetch(&cur, old, __ATOMIC_RELAXED);
        add(p);
    }
    return p;
}

char *getenv(const char *name) {
    static char *(*next)(const char *);
    static char out[64];
    if (name && !strncmp(name, "MALLOC_PEAK_", 12)) {
        if (!strcmp(name + 12, "MARK")) {
            mark = cur;
            peak = cur;
        }
        snprintf(out, sizeof out, "%ld %ld", peak - mark, cur - mark);
        return out;
    }
    if (!next) next = (char *(*)(const char *))dlsym(RTLD_NEXT, "getenv");
    return next(name);
}
