/*
 * futex_floor: the C floor for completion ping-pong across two processes.
 *
 * Usage: futex_floor ITERS SPIN_NS [CPU_A CPU_B]
 *
 * Two processes share an anonymous MAP_SHARED page holding two completion
 * records laid out as kproc's (done, seq, sleepers, reserved; seq is the
 * futex word).  A completes c1 then waits for c2; B waits for c1 then
 * completes c2.  Waiting is the handshake of kproc._native's
 * completion_wait: try, spin up to SPIN_NS on the record (reading the clock
 * every 64 iterations), then announce a sleeper, try again, and FUTEX_WAIT
 * (shared) on seq with the snapshot taken before the first try.  If CPU_A and
 * CPU_B are given, A and B are pinned to them.  B signals once that it is
 * running before A starts timing.
 *
 * Prints each round trip as seen by A, in nanoseconds, one integer per line
 * (ITERS lines) on stdout.  Exit status 0, or 1 with a message on stderr.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield" ::: "memory")
#else
#define cpu_relax() do { } while (0)
#endif

#define LOAD(p) __atomic_load_n((p), __ATOMIC_SEQ_CST)
#define ADD(p, v) __atomic_fetch_add((p), (v), __ATOMIC_SEQ_CST)
#define SUB(p, v) __atomic_fetch_sub((p), (v), __ATOMIC_SEQ_CST)

struct completion {
    uint32_t done, seq, sleepers, reserved;
};

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what)
{
    fprintf(stderr, "futex_floor: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void complete(struct completion *c)
{
    ADD(&c->done, 1);
    ADD(&c->seq, 1);
    if (LOAD(&c->sleepers))
        syscall(SYS_futex, &c->seq, FUTEX_WAKE, 1, NULL, NULL, 0);
}

static int try_take(struct completion *c)
{
    uint32_t v = LOAD(&c->done);
    while (v)
        if (__atomic_compare_exchange_n(&c->done, &v, v - 1, 0, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST))
            return 1;
    return 0;
}

/* 1 acquired while spinning, 2 seq moved without acquiring, 0 spin over. */
static int spin(struct completion *c, uint32_t snap, int64_t spin_ns)
{
    int64_t end = now_ns() + spin_ns;
    for (unsigned i = 1;; i++) {
        if (LOAD(&c->done) && try_take(c))
            return 1;
        if (LOAD(&c->seq) != snap)
            return 2;
        cpu_relax();
        if (i % 64 == 0 && now_ns() >= end)
            return 0;
    }
}

static void wait_for(struct completion *c, int64_t spin_ns)
{
    for (;;) {
        uint32_t snap = LOAD(&c->seq);
        int rc;
        if (try_take(c))
            return;
        if (spin_ns > 0 && (rc = spin(c, snap, spin_ns)) != 0) {
            if (rc == 1)
                return;
            continue;
        }
        ADD(&c->sleepers, 1);
        if (try_take(c)) {
            SUB(&c->sleepers, 1);
            return;
        }
        if (syscall(SYS_futex, &c->seq, FUTEX_WAIT, snap, NULL, NULL, 0) < 0 &&
            errno != EAGAIN && errno != EINTR)
            die("FUTEX_WAIT");
        SUB(&c->sleepers, 1);
    }
}

/* Pin the calling process to CPU @arg.  1 done, 0 failed (message printed). */
static int pin(const char *arg)
{
    cpu_set_t set;
    char *end;
    long cpu = strtol(arg, &end, 10);
    if (*arg == '\0' || *end != '\0' || cpu < 0 || cpu >= CPU_SETSIZE) {
        fprintf(stderr, "futex_floor: bad CPU number '%s'\n", arg);
        return 0;
    }
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof(set), &set) < 0) {
        fprintf(stderr, "futex_floor: CPU %ld: sched_setaffinity: %s\n", cpu, strerror(errno));
        return 0;
    }
    return 1;
}

static long long number(const char *arg, const char *what)
{
    char *end;
    long long v = strtoll(arg, &end, 10);
    if (*arg == '\0' || *end != '\0' || v < 0) {
        fprintf(stderr, "futex_floor: bad %s '%s'\n", what, arg);
        exit(1);
    }
    return v;
}

int main(int argc, char **argv)
{
    struct completion *c;
    int64_t *lat, spin_ns;
    long long iters;
    int status;
    pid_t pid;

    if (argc != 3 && argc != 5) {
        fprintf(stderr, "usage: %s ITERS SPIN_NS [CPU_A CPU_B]\n", argv[0]);
        return 2;
    }
    iters = number(argv[1], "ITERS");
    spin_ns = number(argv[2], "SPIN_NS");
    c = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (c == MAP_FAILED)
        die("mmap");
    lat = calloc(iters ? iters : 1, sizeof(*lat));
    if (!lat)
        die("calloc");

    /* B inherits its CPU across fork, so a bad CPU fails here, not in a peer
     * that A would wait for forever. */
    if (argc == 5 && !pin(argv[4]))
        return 1;
    pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {                     /* B */
        complete(&c[1]);                /* ready: keeps fork out of the first sample */
        for (long long i = 0; i < iters; i++) {
            wait_for(&c[0], spin_ns);
            complete(&c[1]);
        }
        _exit(0);
    }
    if (argc == 5 && !pin(argv[3])) {   /* A */
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return 1;
    }
    wait_for(&c[1], spin_ns);
    for (long long i = 0; i < iters; i++) {
        int64_t t0 = now_ns();
        complete(&c[0]);
        wait_for(&c[1], spin_ns);
        lat[i] = now_ns() - t0;
    }
    if (waitpid(pid, &status, 0) < 0)
        die("waitpid");
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "futex_floor: the peer process failed\n");
        return 1;
    }
    for (long long i = 0; i < iters; i++)
        printf("%lld\n", (long long)lat[i]);
    return fflush(stdout) == 0 ? 0 : 1;
}
