/*
 * Power-cut shim: an LD_PRELOAD library that keeps, beside a directory the
 * process writes (POWERCUT_DIR), a "disk image" (POWERCUT_SHADOW) holding
 * only what the process made durable in that directory. After the process
 * is killed, the image is what a power cut at that moment would have left;
 * tests/src/powercut.rs turns it back into a directory.
 *
 * The model (strict, like ext4 after a crash in the worst case):
 *  - A file's bytes reach the image only when the process calls fsync or
 *    fdatasync on that file (any descriptor of it): then every range
 *    written since the last sync is copied, and the image takes the file's
 *    current size. sync_file_range, close and the page cache count for
 *    nothing. A kill during a sync leaves some of the ranges copied, as a
 *    power cut during writeback would.
 *  - A name exists in the image only when its directory is fsynced: then
 *    the directory's whole current listing (names, types, modes, files)
 *    replaces the old one. So creat, rename, unlink and mkdir are durable
 *    at the next fsync of the directory, all together, in order.
 *  - A file whose name is durable but whose bytes never were comes back
 *    empty; a directory never fsynced comes back empty.
 *  - Files are told apart by inode number and birth time (an inode number
 *    may be reused after an unlink).
 *
 * Image layout: data/<key> (a file's synced bytes), dirs/<key> (a
 * directory's synced listing: "<f|d> <octal mode> <key> <name>" lines),
 * root (the key of POWERCUT_DIR). tests/src/powercut.rs writes the first
 * image from the directory as it is and materialises images.
 *
 * Not modelled, because the gateway does not use them: mmap writes,
 * sync/syncfs, O_SYNC/O_DSYNC, copy_file_range, hard links, file names
 * containing a newline.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

typedef ssize_t (*write_fn)(int, const void *, size_t);
typedef ssize_t (*pwrite_fn)(int, const void *, size_t, off_t);
typedef ssize_t (*writev_fn)(int, const struct iovec *, int);
typedef ssize_t (*pwritev_fn)(int, const struct iovec *, int, off_t);
typedef ssize_t (*pwritev2_fn)(int, const struct iovec *, int, off_t, int);
typedef int (*fsync_fn)(int);
typedef int (*ftruncate_fn)(int, off_t);

static write_fn real_write;
static pwrite_fn real_pwrite, real_pwrite64;
static writev_fn real_writev;
static pwritev_fn real_pwritev, real_pwritev64;
static pwritev2_fn real_pwritev2;
static fsync_fn real_fsync, real_fdatasync;
static ftruncate_fn real_ftruncate, real_ftruncate64;

static pthread_mutex_t lock = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static char dir[PATH_MAX];
static size_t dir_len;
static char shadow[PATH_MAX / 2];
static int enabled;

#define KEY_LEN 64
#define MAX_RANGES 4096

struct file {
    char key[KEY_LEN];
    int whole; /* changed in a way ranges do not describe: copy it all */
    size_t n, cap;
    uint64_t (*ranges)[2]; /* [start, end), sorted, disjoint */
    struct file *next;
};
static struct file *files;

/* What a descriptor was last found to be. */
struct fdinfo {
    dev_t dev;
    ino_t ino;
    int known, tracked, is_dir;
    char key[KEY_LEN];
};
#define MAX_FD 65536
static struct fdinfo fds[MAX_FD];

static void die(const char *what) {
    char msg[512];
    int n = snprintf(msg, sizeof msg, "powercut shim: %s: %s\n", what, strerror(errno));
    if (real_write)
        real_write(2, msg, (size_t)n);
    abort();
}

static void init(void) {
    real_write = (write_fn)dlsym(RTLD_NEXT, "write");
    real_pwrite = (pwrite_fn)dlsym(RTLD_NEXT, "pwrite");
    real_pwrite64 = (pwrite_fn)dlsym(RTLD_NEXT, "pwrite64");
    real_writev = (writev_fn)dlsym(RTLD_NEXT, "writev");
    real_pwritev = (pwritev_fn)dlsym(RTLD_NEXT, "pwritev");
    real_pwritev64 = (pwritev_fn)dlsym(RTLD_NEXT, "pwritev64");
    real_pwritev2 = (pwritev2_fn)dlsym(RTLD_NEXT, "pwritev2");
    real_fsync = (fsync_fn)dlsym(RTLD_NEXT, "fsync");
    real_fdatasync = (fsync_fn)dlsym(RTLD_NEXT, "fdatasync");
    real_ftruncate = (ftruncate_fn)dlsym(RTLD_NEXT, "ftruncate");
    real_ftruncate64 = (ftruncate_fn)dlsym(RTLD_NEXT, "ftruncate64");
    const char *d = getenv("POWERCUT_DIR");
    const char *s = getenv("POWERCUT_SHADOW");
    if (d && s && *d && *s) {
        if (!realpath(d, dir))
            die("POWERCUT_DIR");
        dir_len = strlen(dir);
        snprintf(shadow, sizeof shadow, "%s", s);
        enabled = 1;
    }
}

static void key_of(int fd, char *key) {
    struct statx stx;
    if (statx(fd, "", AT_EMPTY_PATH, STATX_INO | STATX_BTIME, &stx) != 0)
        die("statx");
    long long sec = 0, nsec = 0;
    if (stx.stx_mask & STATX_BTIME) {
        sec = stx.stx_btime.tv_sec;
        nsec = stx.stx_btime.tv_nsec;
    }
    snprintf(key, KEY_LEN, "%llu-%lld.%09lld", (unsigned long long)stx.stx_ino, sec, nsec);
}

/* Under the lock. NULL if the descriptor is not a file or directory under
 * POWERCUT_DIR. */
static struct fdinfo *lookup(int fd) {
    if (fd < 0 || fd >= MAX_FD)
        return NULL;
    struct stat st;
    if (fstat(fd, &st) != 0)
        return NULL;
    struct fdinfo *info = &fds[fd];
    if (info->known && info->dev == st.st_dev && info->ino == st.st_ino)
        return info->tracked ? info : NULL;
    memset(info, 0, sizeof *info);
    info->known = 1;
    info->dev = st.st_dev;
    info->ino = st.st_ino;
    if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode))
        return NULL;
    char link[64], path[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0)
        return NULL;
    path[n] = 0;
    if (strncmp(path, dir, dir_len) != 0 || (path[dir_len] != 0 && path[dir_len] != '/'))
        return NULL;
    info->tracked = 1;
    info->is_dir = S_ISDIR(st.st_mode);
    key_of(fd, info->key);
    return info;
}

static struct file *file_of(const char *key) {
    for (struct file *f = files; f; f = f->next)
        if (strcmp(f->key, key) == 0)
            return f;
    struct file *f = calloc(1, sizeof *f);
    if (!f)
        die("calloc");
    snprintf(f->key, KEY_LEN, "%s", key);
    f->next = files;
    files = f;
    return f;
}

static void add_range(struct file *f, uint64_t start, uint64_t end) {
    if (f->whole || start >= end)
        return;
    /* Merge with every range it touches. */
    size_t i = 0;
    while (i < f->n && f->ranges[i][1] < start)
        i++;
    size_t j = i;
    while (j < f->n && f->ranges[j][0] <= end) {
        if (f->ranges[j][0] < start)
            start = f->ranges[j][0];
        if (f->ranges[j][1] > end)
            end = f->ranges[j][1];
        j++;
    }
    if (j == i) {
        if (f->n == MAX_RANGES) {
            f->whole = 1;
            f->n = 0;
            return;
        }
        if (f->n == f->cap) {
            f->cap = f->cap ? f->cap * 2 : 16;
            f->ranges = realloc(f->ranges, f->cap * sizeof *f->ranges);
            if (!f->ranges)
                die("realloc");
        }
        memmove(&f->ranges[i + 1], &f->ranges[i], (f->n - i) * sizeof *f->ranges);
        f->n++;
    } else if (j > i + 1) {
        memmove(&f->ranges[i + 1], &f->ranges[j], (f->n - j) * sizeof *f->ranges);
        f->n -= j - i - 1;
    }
    f->ranges[i][0] = start;
    f->ranges[i][1] = end;
}

/* After a write of `len` bytes at `off` (or ending at the current offset
 * when off < 0) has returned. */
static void written(int fd, off_t off, ssize_t len) {
    if (len <= 0)
        return;
    pthread_once(&once, init);
    if (!enabled)
        return;
    pthread_mutex_lock(&lock);
    struct fdinfo *info = lookup(fd);
    if (info && !info->is_dir) {
        if (off < 0) {
            off_t end = lseek(fd, 0, SEEK_CUR);
            off = end < 0 ? 0 : end - len;
        }
        add_range(file_of(info->key), (uint64_t)off, (uint64_t)off + (uint64_t)len);
    }
    pthread_mutex_unlock(&lock);
}

static void truncated(int fd) {
    pthread_once(&once, init);
    if (!enabled)
        return;
    pthread_mutex_lock(&lock);
    struct fdinfo *info = lookup(fd);
    if (info && !info->is_dir) {
        struct file *f = file_of(info->key);
        f->whole = 1;
        f->n = 0;
    }
    pthread_mutex_unlock(&lock);
}

static void copy_range(int from, int to, uint64_t start, uint64_t end) {
    static char buf[1 << 16];
    while (start < end) {
        size_t want = end - start < sizeof buf ? (size_t)(end - start) : sizeof buf;
        ssize_t n = pread(from, buf, want, (off_t)start);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            die("pread");
        if (n == 0)
            return; /* past the end: the size is set afterwards */
        for (ssize_t done = 0; done < n;) {
            ssize_t w = real_pwrite(to, buf + done, (size_t)(n - done), (off_t)start + done);
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0)
                die("pwrite image");
            done += w;
        }
        start += (uint64_t)n;
    }
}

static void sync_file(int fd, struct fdinfo *info) {
    struct file *f = file_of(info->key);
    char link[64], path[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    int from = open(link, O_RDONLY | O_CLOEXEC);
    if (from < 0)
        die("reopen for sync");
    snprintf(path, sizeof path, "%s/data/%s", shadow, info->key);
    int whole = f->whole || access(path, F_OK) != 0;
    int to = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (to < 0)
        die("open image file");
    struct stat st;
    if (fstat(from, &st) != 0)
        die("fstat");
    if (whole) {
        copy_range(from, to, 0, (uint64_t)st.st_size);
    } else {
        for (size_t i = 0; i < f->n; i++)
            copy_range(from, to, f->ranges[i][0], f->ranges[i][1]);
    }
    if (real_ftruncate(to, st.st_size) != 0)
        die("size image file");
    f->n = 0;
    f->whole = 0;
    close(to);
    close(from);
}

static void sync_dir(int fd, struct fdinfo *info) {
    int dfd = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        die("reopen directory");
    DIR *d = fdopendir(dfd);
    if (!d)
        die("fdopendir");
    char tmp[PATH_MAX], path[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s/dirs/%s.tmp", shadow, info->key);
    snprintf(path, sizeof path, "%s/dirs/%s", shadow, info->key);
    int out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (out < 0)
        die("open image listing");
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        int child = openat(dfd, e->d_name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
        if (child < 0)
            continue; /* gone since the listing, or not ours to open */
        struct stat st;
        if (fstat(child, &st) == 0 && (S_ISREG(st.st_mode) || S_ISDIR(st.st_mode))) {
            char key[KEY_LEN], line[PATH_MAX + 128];
            key_of(child, key);
            int n = snprintf(line, sizeof line, "%c %o %s %s\n", S_ISDIR(st.st_mode) ? 'd' : 'f',
                             (unsigned)(st.st_mode & 07777), key, e->d_name);
            if (real_write(out, line, (size_t)n) != n)
                die("write image listing");
        }
        close(child);
    }
    closedir(d);
    close(out);
    if (rename(tmp, path) != 0)
        die("rename image listing");
}

static void synced(int fd) {
    pthread_once(&once, init);
    if (!enabled)
        return;
    pthread_mutex_lock(&lock);
    struct fdinfo *info = lookup(fd);
    if (info) {
        if (info->is_dir)
            sync_dir(fd, info);
        else
            sync_file(fd, info);
    }
    pthread_mutex_unlock(&lock);
}

ssize_t write(int fd, const void *buf, size_t n) {
    pthread_once(&once, init);
    ssize_t r = real_write(fd, buf, n);
    int saved = errno;
    written(fd, -1, r);
    errno = saved;
    return r;
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
    pthread_once(&once, init);
    ssize_t r = real_pwrite(fd, buf, n, off);
    int saved = errno;
    written(fd, off, r);
    errno = saved;
    return r;
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off) {
    pthread_once(&once, init);
    ssize_t r = real_pwrite64(fd, buf, n, off);
    int saved = errno;
    written(fd, off, r);
    errno = saved;
    return r;
}

ssize_t writev(int fd, const struct iovec *iov, int cnt) {
    pthread_once(&once, init);
    ssize_t r = real_writev(fd, iov, cnt);
    int saved = errno;
    written(fd, -1, r);
    errno = saved;
    return r;
}

ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off) {
    pthread_once(&once, init);
    ssize_t r = real_pwritev(fd, iov, cnt, off);
    int saved = errno;
    written(fd, off, r);
    errno = saved;
    return r;
}

ssize_t pwritev64(int fd, const struct iovec *iov, int cnt, off_t off) {
    pthread_once(&once, init);
    ssize_t r = real_pwritev64(fd, iov, cnt, off);
    int saved = errno;
    written(fd, off, r);
    errno = saved;
    return r;
}

ssize_t pwritev2(int fd, const struct iovec *iov, int cnt, off_t off, int flags) {
    pthread_once(&once, init);
    ssize_t r = real_pwritev2(fd, iov, cnt, off, flags);
    int saved = errno;
    /* off == -1 means "at the current offset", as write does. */
    written(fd, off, r);
    errno = saved;
    return r;
}

int ftruncate(int fd, off_t len) {
    pthread_once(&once, init);
    int r = real_ftruncate(fd, len);
    int saved = errno;
    if (r == 0)
        truncated(fd);
    errno = saved;
    return r;
}

int ftruncate64(int fd, off_t len) {
    pthread_once(&once, init);
    int r = real_ftruncate64(fd, len);
    int saved = errno;
    if (r == 0)
        truncated(fd);
    errno = saved;
    return r;
}

/* The copy into the image happens before the real sync returns, so when
 * the caller sees success the bytes are in the image. */
int fsync(int fd) {
    pthread_once(&once, init);
    synced(fd);
    return real_fsync(fd);
}

int fdatasync(int fd) {
    pthread_once(&once, init);
    synced(fd);
    return real_fdatasync(fd);
}
