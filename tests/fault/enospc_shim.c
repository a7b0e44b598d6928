/* LD_PRELOAD shim: a disk that fills up. Writes to files whose path starts with
 * $PANGU_FAULT_DIR are counted; once $PANGU_FAULT_BYTES bytes have been written there, every
 * further write to such a file fails with ENOSPC, as on a full filesystem. Used by
 * tests/fault when no small filesystem can be mounted (no `unshare -Urm`). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static long long used = 0;

static int counted(int fd, size_t n) {
  const char *dir = getenv("PANGU_FAULT_DIR");
  const char *budget = getenv("PANGU_FAULT_BYTES");
  if (!dir || !budget || fd < 0) return 0;
  char link[64], path[PATH_MAX];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  ssize_t len = readlink(link, path, sizeof path - 1);
  if (len <= 0) return 0;
  path[len] = '\0';
  if (strncmp(path, dir, strlen(dir)) != 0) return 0;
  if (used + (long long)n > atoll(budget) || used >= atoll(budget)) return -1;
  used += (long long)n;
  return 1;
}

ssize_t write(int fd, const void *buf, size_t n) {
  static ssize_t (*real)(int, const void *, size_t);
  if (!real) real = (ssize_t (*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
  if (counted(fd, n) < 0) { errno = ENOSPC; return -1; }
  return real(fd, buf, n);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off) {
  static ssize_t (*real)(int, const void *, size_t, off_t);
  if (!real) real = (ssize_t (*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, "pwrite64");
  if (counted(fd, n) < 0) { errno = ENOSPC; return -1; }
  return real(fd, buf, n, off);
}

ssize_t writev(int fd, const struct iovec *iov, int cnt) {
  static ssize_t (*real)(int, const struct iovec *, int);
  if (!real) real = (ssize_t (*)(int, const struct iovec *, int))dlsym(RTLD_NEXT, "writev");
  size_t n = 0;
  for (int i = 0; i < cnt; i++) n += iov[i].iov_len;
  if (counted(fd, n) < 0) { errno = ENOSPC; return -1; }
  return real(fd, iov, cnt);
}

/* shutil.copyfile (the tokenizer copy in a checkpoint) writes with sendfile */
/* (n is only an upper bound there: count what was copied) */
ssize_t sendfile64(int out, int in, off_t *off, size_t n) {
  static ssize_t (*real)(int, int, off_t *, size_t);
  if (!real) real = (ssize_t (*)(int, int, off_t *, size_t))dlsym(RTLD_NEXT, "sendfile64");
  int c = counted(out, 0);
  if (c < 0) { errno = ENOSPC; return -1; }
  ssize_t done = real(out, in, off, n);
  if (c > 0 && done > 0) used += done;
  return done;
}

ssize_t sendfile(int out, int in, off_t *off, size_t n) { return sendfile64(out, in, off, n); }

ssize_t copy_file_range(int in, off_t *off_in, int out, off_t *off_out, size_t n, unsigned int flags) {
  static ssize_t (*real)(int, off_t *, int, off_t *, size_t, unsigned int);
  if (!real) real = (ssize_t (*)(int, off_t *, int, off_t *, size_t, unsigned int))dlsym(RTLD_NEXT, "copy_file_range");
  int c = counted(out, 0);
  if (c < 0) { errno = ENOSPC; return -1; }
  ssize_t done = real(in, off_in, out, off_out, n, flags);
  if (c > 0 && done > 0) used += done;
  return done;
}
