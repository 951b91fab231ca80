/*
 * The C floor for completion ping-pong: two processes over a shared page,
 * each side spins up to SPIN_NS on the other's word, then FUTEX_WAITs.
 * Usage: futex_floor ITERS SPIN_NS [CPU_A CPU_B]; prints one round trip (ns) per line.
 */
#define _GNU_SOURCE
#include <linux/futex.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int64_t now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

struct comp { uint32_t done, seq, sleepers, pad; };

static void complete(struct comp *c)
{
    __atomic_fetch_add(&c->done, 1, __ATOMIC_SEQ_CST);
    __atomic_fetch_add(&c->seq, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&c->sleepers, __ATOMIC_SEQ_CST))
        syscall(SYS_futex, &c->seq, FUTEX_WAKE, 1, NULL, NULL, 0);
}

static int try_take(struct comp *c)
{
    uint32_t v = __atomic_load_n(&c->done, __ATOMIC_SEQ_CST);
    while (v)
        if (__atomic_compare_exchange_n(&c->done, &v, v - 1, 0, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST))
            return 1;
    return 0;
}

static void wait_for(struct comp *c, int64_t spin_ns)
{
    for (;;) {
        uint32_t snap = __atomic_load_n(&c->seq, __ATOMIC_SEQ_CST);
        if (try_take(c))
            return;
        int64_t end = now() + spin_ns;
        while (spin_ns > 0 && now() < end) {
            if (__atomic_load_n(&c->done, __ATOMIC_SEQ_CST) && try_take(c))
                return;
            __builtin_ia32_pause();
        }
        __atomic_fetch_add(&c->sleepers, 1, __ATOMIC_SEQ_CST);
        if (!try_take(c))
            syscall(SYS_futex, &c->seq, FUTEX_WAIT, snap, NULL, NULL, 0);
        else {
            __atomic_fetch_sub(&c->sleepers, 1, __ATOMIC_SEQ_CST);
            return;
        }
        __atomic_fetch_sub(&c->sleepers, 1, __ATOMIC_SEQ_CST);
    }
}

static void pin(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof(set), &set);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s ITERS SPIN_NS [CPU_A CPU_B]\n", argv[0]);
        return 2;
    }
    long iters = atol(argv[1]);
    int64_t spin = atoll(argv[2]);
    struct comp *c = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    int64_t *lat = malloc(sizeof(int64_t) * iters);
    pid_t pid = fork();
    if (pid == 0) {
        if (argc > 4)
            pin(atoi(argv[4]));
        for (long i = 0; i < iters; i++) {
            wait_for(&c[0], spin);
            complete(&c[1]);
        }
        _exit(0);
    }
    if (argc > 3)
        pin(atoi(argv[3]));
    for (long i = 0; i < iters; i++) {
        int64_t t0 = now();
        complete(&c[0]);
        wait_for(&c[1], spin);
        lat[i] = now() - t0;
    }
    waitpid(pid, NULL, 0);
    for (long i = 0; i < iters; i++)
        printf("%lld\n", (long long)lat[i]);
    return 0;
}
