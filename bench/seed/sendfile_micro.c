// Sender CPU per GiB of the ways a plaintext seed can move verified file
// bytes to a socket, without the seed (issue 13 item 3: is sendfile worth a
// path in the peer actor?). A child sends the file over loopback TCP, the
// parent drains it; the child's utime + stime per GiB and the wall rate.
//   mode 0: one preadv of a 256 KiB piece, one writev of its 16 piece-frame
//           headers (13 bytes) and 16 KiB blocks: actorrent's path.
//   mode 1: per block, send(header, MSG_MORE) + sendfile(16 KiB): what a
//           zero-copy path must do, since every block needs its header.
//   mode 2: one sendfile per piece, no headers: the floor, not a protocol.
// Build and run (alternate the modes, take medians):
//   gcc -O2 -o /tmp/sendfile_micro bench/seed/sendfile_micro.c
//   head -c $((512<<20)) /dev/urandom > /dev/shm/payload
//   for r in 1 2 3 4 5; do for m in 0 1 2; do /tmp/sendfile_micro /dev/shm/payload $m; done; done
// Prints: mode, sender CPU s/GiB, MB/s, child exit status.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#define PIECE (256 << 10)
#define BLOCK (16 << 10)
static void sf_all(int s, int fd, off_t o, size_t n) {
  while (n) { off_t oo = o; ssize_t k = sendfile(s, fd, &oo, n); if (k <= 0) exit(3); o += k; n -= k; }
}
static void writev_all(int s, struct iovec *iov, int cnt) {
  while (cnt) {
    ssize_t k = writev(s, iov, cnt); if (k <= 0) exit(4);
    while (cnt && (size_t)k >= iov->iov_len) { k -= iov->iov_len; iov++; cnt--; }
    if (cnt) { iov->iov_base = (char *)iov->iov_base + k; iov->iov_len -= k; }
  }
}
int main(int argc, char **argv) {
  int mode = atoi(argv[2]); // 0 pread+writev, 1 per-block sendfile, 2 per-piece sendfile
  int fd = open(argv[1], O_RDONLY); struct stat st; fstat(fd, &st);
  int ls = socket(AF_INET, SOCK_STREAM, 0); struct sockaddr_in a = {0};
  a.sin_family = AF_INET; a.sin_addr.s_addr = htonl(0x7f000001);
  bind(ls, (void *)&a, sizeof a); listen(ls, 1); socklen_t l = sizeof a; getsockname(ls, (void *)&a, &l);
  struct timespec t0, t1; clock_gettime(CLOCK_MONOTONIC, &t0);
  pid_t pid = fork();
  if (pid == 0) {
    int s = socket(AF_INET, SOCK_STREAM, 0); if (connect(s, (void *)&a, sizeof a)) exit(2);
    char *buf = malloc(PIECE); char head[13] = {0}; struct iovec iov[32];
    for (off_t off = 0; off < st.st_size; off += PIECE) {
      size_t n = st.st_size - off < PIECE ? st.st_size - off : PIECE;
      if (mode == 2) sf_all(s, fd, off, n);
      else if (mode == 1) for (size_t b = 0; b < n; b += BLOCK) { send(s, head, 13, MSG_MORE); sf_all(s, fd, off + b, n - b < BLOCK ? n - b : BLOCK); }
      else {
        struct iovec v = {buf, n}; if (preadv(fd, &v, 1, off) != (ssize_t)n) exit(5);
        int c = 0; for (size_t b = 0; b < n; b += BLOCK) { iov[c++] = (struct iovec){head, 13}; iov[c++] = (struct iovec){buf + b, n - b < BLOCK ? n - b : BLOCK}; }
        writev_all(s, iov, c);
      }
    }
    close(s); _exit(0);
  }
  int c = accept(ls, 0, 0); char *rb = malloc(1 << 20); while (read(c, rb, 1 << 20) > 0) {}
  int status; struct rusage ru; wait4(pid, &status, 0, &ru); clock_gettime(CLOCK_MONOTONIC, &t1);
  double cpu = ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
  double wall = t1.tv_sec - t0.tv_sec + (t1.tv_nsec - t0.tv_nsec) / 1e9;
  printf("%d %.4f %.1f %d\n", mode, cpu / (st.st_size / 1073741824.0), st.st_size / wall / 1e6, status);
  return 0;
}
