/* holdc: the job of one `multiip hold` worker, in C, for benchmarks/peers.py to compare with. For every
 * source port LO..HI: a socket bound to SRC:port (SO_REUSEADDR, SO_LINGER 0) connected without blocking
 * to HOST:PORT, at most 512 in flight, epoll for the outcome; once every one is established (or failed) all
 * are closed with RST, and it prints {"est": N, "fail": N, "seconds": S} and exits.
 * Build: gcc -O2 -o holdc holdc.c   Run: holdc SRC LO HI HOST PORT   (IPv4) */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define INFLIGHT 512

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: holdc SRC LO HI HOST PORT\n");
        return 2;
    }
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    int lo = atoi(argv[2]), hi = atoi(argv[3]);
    struct sockaddr_in src = {.sin_family = AF_INET}, dst = {.sin_family = AF_INET};
    inet_pton(AF_INET, argv[1], &src.sin_addr);
    inet_pton(AF_INET, argv[4], &dst.sin_addr);
    dst.sin_port = htons(atoi(argv[5]));
    int n = hi - lo + 1, *held = calloc(n, sizeof(int)), nheld = 0, failed = 0, inflight = 0, next = lo;
    int ep = epoll_create1(0), one = 1;
    struct linger rst = {1, 0};
    struct epoll_event events[4096];
    double t0 = now();
    while (next <= hi || inflight > 0) {
        while (inflight < INFLIGHT && next <= hi) {
            int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
            if (fd < 0) { failed++; next++; continue; }
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &rst, sizeof rst);
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
            src.sin_port = htons(next++);
            if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) { failed++; close(fd); continue; }
            if (connect(fd, (struct sockaddr *)&dst, sizeof dst) < 0 && errno != EINPROGRESS) {
                failed++;
                close(fd);
                continue;
            }
            struct epoll_event ev = {.events = EPOLLOUT, .data.fd = fd};
            epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
            inflight++;
        }
        int k = epoll_wait(ep, events, 4096, 1000);
        for (int i = 0; i < k; i++) {
            int fd = events[i].data.fd, err = 0;
            socklen_t len = sizeof err;
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
            epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
            inflight--;
            if (err == 0 && !(events[i].events & (EPOLLERR | EPOLLHUP))) held[nheld++] = fd;
            else { failed++; close(fd); }
        }
    }
    double ramp = now() - t0;
    for (int i = 0; i < nheld; i++) close(held[i]);
    printf("{\"est\": %d, \"fail\": %d, \"seconds\": %.3f, \"ramp\": %.3f}\n", nheld, failed, now() - t0, ramp);
    return failed ? 1 : 0;
}
