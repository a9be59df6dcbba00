// Counts the bytes a process copies with memcpy and memmove, preloaded (LD_PRELOAD) into a proxy
// by e2e/bench/instructions.sh -m. Rust moves a value bigger than a few words (a future handed to
// the next await layer, a struct returned by value) with a call to memcpy, so the count says how
// many bytes a request shuffles in memory besides the ones it must (the body, the headers).
//
// On exit, writes to $MEMCPY_OUT (stderr when unset) the totals in callgrind's format, which
// instructions.sh already reads:
//     events: memcpy_calls memcpy_bytes
//     totals: <calls> <bytes>
// and, when $MEMCPY_SITES names a file, one line per call site: calls, bytes, the size of the
// most recent copy, the module and the return address as an offset in it (addr2line -e <module>
// -f -C -i <offset> names the Rust function when the binary has line tables).
//
// The copy itself is `rep movsb` (no call back into a memcpy that this file replaces); counting
// costs a few atomic adds, so time measured with the shim loaded means nothing.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define SITES 8192

struct site {
    _Atomic uintptr_t address;
    _Atomic uint64_t calls;
    _Atomic uint64_t bytes;
    _Atomic uint64_t last_size;
};

static _Atomic uint64_t total_calls;
static _Atomic uint64_t total_bytes;
static _Atomic uint64_t dropped_sites;
static struct site sites[SITES];

// Copies smaller than this are counted in the totals but not per site: they are the moves of a
// few words that every program makes, and the site table stays small.
static const size_t site_threshold = 16;

static void count(void *caller, size_t n) {
    atomic_fetch_add_explicit(&total_calls, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&total_bytes, n, memory_order_relaxed);
    if (n < site_threshold) return;
    uintptr_t key = (uintptr_t)caller;
    size_t slot = (key >> 2) * 11400714819323198485ull >> 51;  // 13 bits: SITES slots
    for (size_t probe = 0; probe < SITES; probe++) {
        struct site *s = &sites[(slot + probe) % SITES];
        uintptr_t seen = atomic_load_explicit(&s->address, memory_order_relaxed);
        if (seen == 0) {
            uintptr_t expected = 0;
            if (atomic_compare_exchange_strong(&s->address, &expected, key)) {
                seen = key;
            } else {
                seen = expected;
            }
        }
        if (seen == key) {
            atomic_fetch_add_explicit(&s->calls, 1, memory_order_relaxed);
            atomic_fetch_add_explicit(&s->bytes, n, memory_order_relaxed);
            atomic_store_explicit(&s->last_size, n, memory_order_relaxed);
            return;
        }
    }
    atomic_fetch_add_explicit(&dropped_sites, 1, memory_order_relaxed);
}

static void copy_forward(void *dst, const void *src, size_t n) {
    __asm__ volatile("rep movsb" : "+D"(dst), "+S"(src), "+c"(n) : : "memory");
}

static void copy_backward(void *dst, const void *src, size_t n) {
    unsigned char *d = (unsigned char *)dst + n;
    const unsigned char *s = (const unsigned char *)src + n;
    while (n--) *--d = *--s;
}

void *memcpy(void *dst, const void *src, size_t n) {
    count(__builtin_return_address(0), n);
    copy_forward(dst, src, n);
    return dst;
}

void *memmove(void *dst, const void *src, size_t n) {
    count(__builtin_return_address(0), n);
    if ((uintptr_t)dst - (uintptr_t)src >= n) {
        copy_forward(dst, src, n);  // no overlap, or the destination is below the source
    } else {
        copy_backward(dst, src, n);
    }
    return dst;
}

__attribute__((destructor)) static void report(void) {
    const char *path = getenv("MEMCPY_OUT");
    FILE *out = path ? fopen(path, "w") : stderr;
    if (out) {
        fprintf(out, "events: memcpy_calls memcpy_bytes\ntotals: %llu %llu\n",
                (unsigned long long)atomic_load(&total_calls),
                (unsigned long long)atomic_load(&total_bytes));
        if (out != stderr) fclose(out);
    }
    const char *sites_path = getenv("MEMCPY_SITES");
    FILE *table = sites_path ? fopen(sites_path, "w") : NULL;
    if (!table) return;
    for (size_t i = 0; i < SITES; i++) {
        uintptr_t address = atomic_load(&sites[i].address);
        if (address == 0) continue;
        Dl_info info = {0};
        const char *module = "?";
        uintptr_t offset = address;
        if (dladdr((void *)address, &info) && info.dli_fname) {
            module = info.dli_fname;
            offset = address - (uintptr_t)info.dli_fbase;
        }
        // The return address is the instruction after the call; one byte back is in the call.
        fprintf(table, "%llu %llu %llu %s 0x%llx\n", (unsigned long long)atomic_load(&sites[i].calls),
                (unsigned long long)atomic_load(&sites[i].bytes),
                (unsigned long long)atomic_load(&sites[i].last_size), module,
                (unsigned long long)(offset - 1));
    }
    if (atomic_load(&dropped_sites)) {
        fprintf(table, "# %llu copies at sites beyond the table's %d\n",
                (unsigned long long)atomic_load(&dropped_sites), SITES);
    }
    fclose(table);
}
