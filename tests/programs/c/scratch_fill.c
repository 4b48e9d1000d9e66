/* Writes a temporary file in its scratch directory ($TMPDIR), reads it
 * back, then fills the directory until a write fails, as a C program built
 * for another host would; prints what happened as JSON. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void) {
    const char *dir = getenv("TMPDIR");
    if (!dir) {
        fprintf(stderr, "no TMPDIR\n");
        return 2;
    }
    char path[512];
    snprintf(path, sizeof path, "%s/roundtrip.txt", dir);
    FILE *f = fopen(path, "w+");
    if (!f) {
        printf("{\"error\":\"open %s: %s\"}", path, strerror(errno));
        return 1;
    }
    fputs("hello from scratch", f);
    fflush(f);
    rewind(f);
    char back[64] = {0};
    if (!fgets(back, sizeof back, f)) {
        printf("{\"error\":\"read back: %s\"}", strerror(errno));
        return 1;
    }
    fclose(f);

    snprintf(path, sizeof path, "%s/fill.bin", dir);
    f = fopen(path, "w");
    if (!f) {
        printf("{\"error\":\"open %s: %s\"}", path, strerror(errno));
        return 1;
    }
    static char chunk[4096];
    memset(chunk, 'x', sizeof chunk);
    long filled = 0;
    int err = 0;
    while (filled < (1L << 30)) {
        if (fwrite(chunk, 1, sizeof chunk, f) != sizeof chunk || fflush(f) != 0) {
            err = errno;
            break;
        }
        filled += (long)sizeof chunk;
    }
    fclose(f);
    fprintf(stderr, "filled %ld bytes, then: %s\n", filled, strerror(err));
    printf("{\"read_back\":\"%s\",\"filled\":%ld,\"error\":\"%s\"}", back, filled,
           strerror(err));
    return 0;
}
