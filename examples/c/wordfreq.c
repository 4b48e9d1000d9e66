/*
 * wordfreq: a wpool task written in C, built as a WASI command module
 * (wasm32-wasip1).
 *
 * ABI (WASI command): the input JSON arrives on stdin, the output JSON goes
 * to stdout, the log goes to stderr, and the exit code says whether the task
 * succeeded (0) or failed (2 for invalid input).
 *
 * Input:  {"text": "...", "top": N}   ("top" optional, default 10)
 * Output: {"total": T, "unique": U, "top": [{"word": "...", "count": n}, ...]}
 *
 * A word is a maximal run of ASCII letters and digits, lowercased; every
 * other byte separates words. The top list is sorted by count descending,
 * then by word in byte order. See examples/inputs/wordfreq_reference.py.
 *
 * The JSON reader below is small and hand-written: it validates the whole
 * input document and extracts the two fields it needs.
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_TOP 10
#define EXIT_INVALID_INPUT 2

/* ---------------------------------------------------------------- errors */

static void fail(const char *fmt, ...) {
    va_list ap;
    fputs("wordfreq: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(EXIT_INVALID_INPUT);
}

static void *xrealloc(void *p, size_t n) {
    p = realloc(p, n ? n : 1);
    if (!p) {
        fputs("wordfreq: out of memory\n", stderr);
        exit(1);
    }
    return p;
}

/* --------------------------------------------------------- byte buffers */

typedef struct {
    char *data;
    size_t len, cap;
} Buf;

static void buf_push(Buf *b, char c) {
    if (b->len == b->cap) {
        b->cap = b->cap ? b->cap * 2 : 256;
        b->data = xrealloc(b->data, b->cap);
    }
    b->data[b->len++] = c;
}

/* Reads all of stdin, straight into a growing heap buffer (the wasm stack
   is small: 64 KiB by default). */
static Buf read_stdin(void) {
    Buf b = {0};
    for (;;) {
        if (b.cap - b.len < 65536) {
            b.cap = b.cap ? b.cap * 2 : 65536;
            b.data = xrealloc(b.data, b.cap);
        }
        size_t n = fread(b.data + b.len, 1, b.cap - b.len, stdin);
        b.len += n;
        if (n == 0) break;
    }
    if (ferror(stdin)) fail("cannot read stdin");
    return b;
}

/* ------------------------------------------------------------ JSON input */

/* A cursor over the input document. */
typedef struct {
    const unsigned char *s, *end;
} Json;

static void skip_ws(Json *j) {
    while (j->s < j->end &&
           (*j->s == ' ' || *j->s == '\t' || *j->s == '\n' || *j->s == '\r'))
        j->s++;
}

/* Start of the document, for the byte offsets in error messages. */
static const unsigned char *doc_start;

static void json_fail(Json *j, const char *what) {
    fail("invalid input JSON: %s at byte %ld", what, (long)(j->s - doc_start));
}

static void expect_literal(Json *j, const char *lit) {
    size_t n = strlen(lit);
    if ((size_t)(j->end - j->s) < n || memcmp(j->s, lit, n) != 0)
        json_fail(j, "unexpected token");
    j->s += n;
}

static int hex_value(unsigned char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/*
 * Parses a string (the cursor is on its opening quote). When `out` is not
 * NULL, the decoded bytes are appended to it. For word counting only ASCII
 * matters: an escaped code point above 0x7F is decoded as a space, which
 * separates words exactly as its UTF-8 bytes would.
 */
static void parse_string(Json *j, Buf *out) {
    j->s++; /* opening quote */
    for (;;) {
        if (j->s >= j->end) json_fail(j, "unterminated string");
        unsigned char c = *j->s++;
        if (c == '"') return;
        if (c < 0x20) json_fail(j, "control character in string");
        if (c != '\\') {
            if (out) buf_push(out, (char)c);
            continue;
        }
        if (j->s >= j->end) json_fail(j, "unterminated string");
        char decoded;
        switch (*j->s++) {
        case '"': decoded = '"'; break;
        case '\\': decoded = '\\'; break;
        case '/': decoded = '/'; break;
        case 'b': decoded = '\b'; break;
        case 'f': decoded = '\f'; break;
        case 'n': decoded = '\n'; break;
        case 'r': decoded = '\r'; break;
        case 't': decoded = '\t'; break;
        case 'u': {
            unsigned cp = 0;
            for (int i = 0; i < 4; i++) {
                int h = j->s < j->end ? hex_value(*j->s) : -1;
                if (h < 0) json_fail(j, "bad \\u escape");
                cp = cp * 16 + (unsigned)h;
                j->s++;
            }
            /* Surrogate halves and all non-ASCII code points separate
               words; only ASCII needs its real value. */
            decoded = cp < 0x80 ? (char)cp : ' ';
            break;
        }
        default: json_fail(j, "bad escape in string");
        }
        if (out) buf_push(out, decoded);
    }
}

/*
 * Parses a number. Returns 1 and stores it in *value when it is a
 * non-negative integer without fraction or exponent (saturating at
 * SIZE_MAX), 0 for any other valid number.
 */
static int parse_number(Json *j, size_t *value) {
    int integer = 1;
    size_t v = 0;
    if (*j->s == '-') {
        integer = 0;
        j->s++;
    }
    if (j->s >= j->end || *j->s < '0' || *j->s > '9') json_fail(j, "bad number");
    if (*j->s == '0') {
        j->s++;
    } else {
        while (j->s < j->end && *j->s >= '0' && *j->s <= '9') {
            unsigned d = *j->s++ - '0';
            v = v > (SIZE_MAX - d) / 10 ? SIZE_MAX : v * 10 + d;
        }
    }
    if (j->s < j->end && *j->s == '.') {
        integer = 0;
        j->s++;
        if (j->s >= j->end || *j->s < '0' || *j->s > '9') json_fail(j, "bad number");
        while (j->s < j->end && *j->s >= '0' && *j->s <= '9') j->s++;
    }
    if (j->s < j->end && (*j->s == 'e' || *j->s == 'E')) {
        integer = 0;
        j->s++;
        if (j->s < j->end && (*j->s == '+' || *j->s == '-')) j->s++;
        if (j->s >= j->end || *j->s < '0' || *j->s > '9') json_fail(j, "bad number");
        while (j->s < j->end && *j->s >= '0' && *j->s <= '9') j->s++;
    }
    if (integer) *value = v;
    return integer;
}

/* Parses `"key":` (the key is not kept). */
static void skip_key(Json *j) {
    skip_ws(j);
    if (j->s >= j->end || *j->s != '"') json_fail(j, "expected a key");
    parse_string(j, NULL);
    skip_ws(j);
    if (j->s >= j->end || *j->s != ':') json_fail(j, "expected ':'");
    j->s++;
}

/*
 * Skips any JSON value, validating it. Iterative, with the open containers
 * ('[' or '{') on a heap stack: deep nesting cannot overflow the small wasm
 * stack.
 */
static void skip_value(Json *j) {
    Buf open = {0};
    size_t ignored;
    for (;;) {
        /* One value, or the opening of a container. */
        skip_ws(j);
        if (j->s >= j->end) json_fail(j, "unexpected end");
        switch (*j->s) {
        case '"': parse_string(j, NULL); break;
        case 't': expect_literal(j, "true"); break;
        case 'f': expect_literal(j, "false"); break;
        case 'n': expect_literal(j, "null"); break;
        case '[':
        case '{': {
            char close = *j->s == '[' ? ']' : '}';
            j->s++;
            skip_ws(j);
            if (j->s < j->end && *j->s == close) { j->s++; break; }
            buf_push(&open, close == ']' ? '[' : '{');
            if (close == '}') skip_key(j);
            continue; /* parse the first element */
        }
        default:
            if (*j->s == '-' || (*j->s >= '0' && *j->s <= '9')) {
                parse_number(j, &ignored);
                break;
            }
            json_fail(j, "unexpected character");
        }
        /* After a value: close containers until one has a next element. */
        for (;;) {
            if (open.len == 0) { free(open.data); return; }
            char container = open.data[open.len - 1];
            skip_ws(j);
            if (j->s < j->end && *j->s == ',') {
                j->s++;
                if (container == '{') skip_key(j);
                break;
            }
            if (j->s < j->end && *j->s == (container == '[' ? ']' : '}')) {
                j->s++;
                open.len--;
                continue;
            }
            json_fail(j, container == '[' ? "expected ',' or ']'" : "expected ',' or '}'");
        }
    }
}

typedef struct {
    Buf text;     /* decoded bytes of "text" */
    int has_text; /* "text" was present and a string */
    size_t top;   /* "top", or DEFAULT_TOP */
} Request;

/* Parses the top-level object, keeping "text" and "top" (the last one wins
   when a key repeats, as in most JSON readers). */
static Request parse_request(const Buf *input) {
    Request req = {.top = DEFAULT_TOP};
    Json j = {(const unsigned char *)input->data,
              (const unsigned char *)input->data + input->len};
    doc_start = j.s;
    Buf key = {0};

    skip_ws(&j);
    if (j.s >= j.end || *j.s != '{') fail("invalid input JSON: expected an object");
    j.s++;
    skip_ws(&j);
    if (j.s < j.end && *j.s == '}') {
        j.s++;
    } else {
        for (;;) {
            skip_ws(&j);
            if (j.s >= j.end || *j.s != '"') json_fail(&j, "expected a key");
            key.len = 0;
            parse_string(&j, &key);
            skip_ws(&j);
            if (j.s >= j.end || *j.s != ':') json_fail(&j, "expected ':'");
            j.s++;
            skip_ws(&j);
            if (j.s >= j.end) json_fail(&j, "unexpected end");

            if (key.len == 4 && memcmp(key.data, "text", 4) == 0) {
                if (*j.s == '"') {
                    req.text.len = 0;
                    parse_string(&j, &req.text);
                    req.has_text = 1;
                } else {
                    skip_value(&j);
                    req.has_text = 0;
                }
            } else if (key.len == 3 && memcmp(key.data, "top", 3) == 0) {
                if (!(*j.s == '-' || (*j.s >= '0' && *j.s <= '9')) ||
                    !parse_number(&j, &req.top))
                    fail("\"top\" must be a non-negative integer");
            } else {
                skip_value(&j);
            }

            skip_ws(&j);
            if (j.s < j.end && *j.s == ',') { j.s++; continue; }
            if (j.s < j.end && *j.s == '}') { j.s++; break; }
            json_fail(&j, "expected ',' or '}'");
        }
    }
    skip_ws(&j);
    if (j.s != j.end) json_fail(&j, "trailing characters after the object");
    if (!req.has_text) fail("input needs a string field \"text\"");
    free(key.data);
    return req;
}

/* ------------------------------------------------------------- counting */

/* A word is a slice of the (lowercased) text. */
typedef struct {
    const char *word;
    size_t len;
    size_t count;
} Entry;

/* Open-addressing hash table keyed by word bytes (FNV-1a). */
typedef struct {
    Entry *slots;
    size_t cap, used;
} Table;

static uint32_t fnv1a(const char *p, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 16777619u;
    return h;
}

static void table_grow(Table *t) {
    Table bigger = {.cap = t->cap ? t->cap * 2 : 1024};
    bigger.slots = calloc(bigger.cap, sizeof(Entry));
    if (!bigger.slots) { fputs("wordfreq: out of memory\n", stderr); exit(1); }
    for (size_t i = 0; i < t->cap; i++) {
        Entry *e = &t->slots[i];
        if (!e->word) continue;
        size_t k = fnv1a(e->word, e->len) & (bigger.cap - 1);
        while (bigger.slots[k].word) k = (k + 1) & (bigger.cap - 1);
        bigger.slots[k] = *e;
        bigger.used++;
    }
    free(t->slots);
    *t = bigger;
}

static void table_add(Table *t, const char *word, size_t len) {
    if ((t->used + 1) * 4 > t->cap * 3) table_grow(t); /* load <= 3/4 */
    size_t k = fnv1a(word, len) & (t->cap - 1);
    for (;; k = (k + 1) & (t->cap - 1)) {
        Entry *e = &t->slots[k];
        if (!e->word) {
            *e = (Entry){word, len, 1};
            t->used++;
            return;
        }
        if (e->len == len && memcmp(e->word, word, len) == 0) {
            e->count++;
            return;
        }
    }
}

static int is_word_byte(unsigned char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
           (c >= 'A' && c <= 'Z');
}

/* Count descending, then word ascending in byte order. */
static int by_rank(const void *pa, const void *pb) {
    const Entry *a = pa, *b = pb;
    if (a->count != b->count) return a->count > b->count ? -1 : 1;
    size_t n = a->len < b->len ? a->len : b->len;
    int c = memcmp(a->word, b->word, n);
    if (c) return c;
    return (a->len > b->len) - (a->len < b->len);
}

/* ------------------------------------------------------------- output */

/* Writes a JSON string with the escapes JSON requires. */
static void write_json_string(const char *s, size_t n) {
    putchar('"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"': fputs("\\\"", stdout); break;
        case '\\': fputs("\\\\", stdout); break;
        case '\n': fputs("\\n", stdout); break;
        case '\r': fputs("\\r", stdout); break;
        case '\t': fputs("\\t", stdout); break;
        default:
            if (c < 0x20) printf("\\u%04x", c);
            else putchar(c);
        }
    }
    putchar('"');
}

/* ---------------------------------------------------------------- main */

int main(void) {
    Buf input = read_stdin();
    Request req = parse_request(&input);
    char *text = req.text.data;
    size_t n = req.text.len;

    /* Split into words, lowercasing in place; report progress on stderr
       (the wpool command-module convention) every 1 MiB and at the end. */
    Table table = {0};
    size_t total = 0;
    const size_t step = 1u << 20;
    for (size_t i = 0; i < n;) {
        if (!is_word_byte((unsigned char)text[i])) { i++; continue; }
        size_t start = i;
        for (; i < n && is_word_byte((unsigned char)text[i]); i++)
            if (text[i] >= 'A' && text[i] <= 'Z') text[i] += 'a' - 'A';
        table_add(&table, text + start, i - start);
        total++;
        if (i / step != start / step)
            fprintf(stderr, "wpool:progress %zu %zu\n", i, n);
    }
    fprintf(stderr, "wpool:progress %zu %zu\n", n, n);

    /* Gather the distinct words and rank them. */
    size_t unique = table.used;
    Entry *ranked = xrealloc(NULL, unique * sizeof(Entry));
    for (size_t i = 0, k = 0; i < table.cap; i++)
        if (table.slots[i].word) ranked[k++] = table.slots[i];
    qsort(ranked, unique, sizeof(Entry), by_rank);

    size_t shown = req.top < unique ? req.top : unique;
    printf("{\"total\":%zu,\"unique\":%zu,\"top\":[", total, unique);
    for (size_t i = 0; i < shown; i++) {
        if (i) putchar(',');
        fputs("{\"word\":", stdout);
        write_json_string(ranked[i].word, ranked[i].len);
        printf(",\"count\":%zu}", ranked[i].count);
    }
    fputs("]}\n", stdout);
    fprintf(stderr, "wordfreq: %zu words, %zu distinct\n", total, unique);

    if (fflush(stdout) != 0) return 1;
    return 0;
}
