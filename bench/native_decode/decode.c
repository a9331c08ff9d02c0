/* Prototype: decode an OTLP ExportTraceServiceRequest's protobuf bytes straight into the fields
 * normalize's view takes, without building protobuf objects.
 *
 * The caller (bench/native_decode.py) gives a key table: per attribute key, the field slot it fills,
 * its priority within the field (lower wins, as in the dialect table) and how its value is read. A key
 * with slot -1 is one this decoder does not cover: a span carrying it is marked FALLBACK, and the
 * caller reads that span in Python. Keys not in the table are skipped without looking at their values.
 *
 * Output: per span, SPAN_HEADER numbers then, for each slot the span gives a value (H_PRESENT of them,
 * in slot order), three numbers (name, a, b): name is the winning key's position in the key table (the
 * caller knows from it the field and how to read the value); b >= 0 is a string of b bytes at offset a
 * of the request, b == NUMBER means a is an integer.
 * Strings are never copied: they stay offsets into the request bytes.
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { TEXT = 0, COUNT = 1, FIRST_TEXT = 2 };
enum { FLAG_FALLBACK = 1, FLAG_INVALID_IDS = 2 };
enum {
    H_FLAGS, H_SPAN_OFFSET, H_SPAN_LENGTH, H_TRACE_ID, H_SPAN_ID, H_PARENT_ID, H_PARENT_LENGTH,
    H_NAME, H_NAME_LENGTH, H_START, H_END, H_SERVICE, H_SERVICE_LENGTH, H_PRESENT, SPAN_HEADER
};
#define PER_SLOT 3 /* name, value or offset, length or marker */
#define NUMBER (-2)
#define MAX_TOKENS 10000000000LL
#define MAX_SLOTS 32
#define TABLE_SIZE 1024 /* open addressing, at most half full */
#define STATUS_ERROR 2

typedef struct {
    const uint8_t *key;
    int32_t length;
    int32_t slot;
    int32_t priority;
    int32_t conversion;
    int32_t name; /* its position in the caller's key table */
} Entry;

static Entry table[TABLE_SIZE];
static int slots;

static uint64_t hash(const uint8_t *p, size_t n) {
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ULL;
    return h;
}

/* keys: all keys concatenated; the i-th is lengths[i] bytes. The key bytes must outlive the table. */
int configure(const uint8_t *keys, const int32_t *lengths, const int32_t *slot, const int32_t *priority,
              const int32_t *conversion, int count, int slot_count) {
    if (count > TABLE_SIZE / 2 || slot_count > MAX_SLOTS) return -1;
    memset(table, 0, sizeof table);
    slots = slot_count;
    for (int i = 0; i < count; i++) {
        size_t h = hash(keys, lengths[i]) % TABLE_SIZE;
        while (table[h].key) h = (h + 1) % TABLE_SIZE;
        table[h] = (Entry){keys, lengths[i], slot[i], priority[i], conversion[i], i};
        keys += lengths[i];
    }
    return 0;
}

static const Entry *lookup(const uint8_t *key, size_t n) {
    size_t h = hash(key, n) % TABLE_SIZE;
    for (; table[h].key; h = (h + 1) % TABLE_SIZE)
        if ((size_t)table[h].length == n && memcmp(table[h].key, key, n) == 0) return &table[h];
    return NULL;
}

/* One protobuf field: its number, wire type, and either a varint/fixed value or a byte range. */
typedef struct {
    const uint8_t *p, *end;
} Reader;

typedef struct {
    uint32_t number;
    uint32_t wire;
    uint64_t value;
    const uint8_t *data;
    size_t length;
} Field;

static int varint(Reader *r, uint64_t *out) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (r->p >= r->end) return -1;
        uint8_t b = *r->p++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return -1;
}

/* 1 when a field was read, 0 at the end, -1 on malformed input. */
static int next(Reader *r, Field *f) {
    uint64_t tag;
    if (r->p >= r->end) return 0;
    if (varint(r, &tag) < 0) return -1;
    f->number = (uint32_t)(tag >> 3);
    f->wire = tag & 7;
    f->data = NULL;
    f->length = 0;
    switch (f->wire) {
    case 0:
        return varint(r, &f->value) < 0 ? -1 : 1;
    case 1:
        if (r->end - r->p < 8) return -1;
        memcpy(&f->value, r->p, 8); /* little-endian, as the wire */
        r->p += 8;
        return 1;
    case 5:
        if (r->end - r->p < 4) return -1;
        r->p += 4;
        return 1;
    case 2: {
        uint64_t n;
        if (varint(r, &n) < 0 || n > (uint64_t)(r->end - r->p)) return -1;
        f->data = r->p;
        f->length = n;
        r->p += n;
        return 1;
    }
    default:
        return -1; /* groups: not in OTLP */
    }
}

#define FOR_FIELDS(reader, field, status) while (((status) = next(&(reader), &(field))) > 0)

/* An AnyValue's set member (the last one on the wire wins, as protobuf's oneof). */
typedef struct {
    uint32_t which; /* 0: none, else the AnyValue field number */
    uint64_t value;
    const uint8_t *data;
    size_t length;
} Value;

static int any_value(const uint8_t *p, size_t n, Value *v) {
    Reader r = {p, p + n};
    Field f;
    int status;
    v->which = 0;
    FOR_FIELDS(r, f, status) {
        if (f.number >= 1 && f.number <= 7) {
            v->which = f.number;
            v->value = f.value;
            v->data = f.data;
            v->length = f.length;
        }
    }
    return status;
}

enum { STRING_VALUE = 1, INT_VALUE = 3, ARRAY_VALUE = 5 };

/* Reads one attribute value into (a, b) as the entry's conversion says: 1 read, 0 nothing to read
 * (an empty string: the next candidate may say it), -1 a value this prototype leaves to Python. */
static int convert(const Entry *e, const Value *v, const uint8_t *base, int64_t *a, int64_t *b) {
    if (v->which == 0) return e->conversion == TEXT ? 0 : -1; /* no value: nothing said, or unusable */
    if (e->conversion == COUNT) {
        int64_t number = (int64_t)v->value;
        if (v->which != INT_VALUE || number < 0 || number > MAX_TOKENS) return -1;
        *a = number;
        *b = NUMBER;
        return 1;
    }
    if (v->which == STRING_VALUE) {
        if (v->length == 0) return 0;
        *a = v->data - base;
        *b = (int64_t)v->length;
        return 1;
    }
    if (e->conversion == FIRST_TEXT && v->which == ARRAY_VALUE) {
        Reader r = {v->data, v->data + v->length};
        Field f;
        Value item;
        int status;
        FOR_FIELDS(r, f, status) {
            if (f.number != 1 || f.wire != 2) continue;
            if (any_value(f.data, f.length, &item) < 0) return -1;
            if (item.which == STRING_VALUE && item.length > 0) {
                *a = item.data - base;
                *b = (int64_t)item.length;
                return 1;
            }
        }
        return status < 0 ? -1 : 0;
    }
    return -1;
}

typedef struct {
    const uint8_t *key, *value; /* NULL when absent */
    size_t key_length, value_length;
} KeyValue;

static int key_value(const uint8_t *p, size_t n, KeyValue *kv) {
    Reader r = {p, p + n};
    Field f;
    int status;
    *kv = (KeyValue){0};
    FOR_FIELDS(r, f, status) {
        if (f.wire != 2) continue;
        if (f.number == 1) kv->key = f.data, kv->key_length = f.length;
        else if (f.number == 2) kv->value = f.data, kv->value_length = f.length;
    }
    return status;
}

/* One KeyValue of a span: fills its slot when it beats what the slot holds. */
static int attribute(const uint8_t *p, size_t n, const uint8_t *base, int64_t *found, int32_t *best, int64_t *flags) {
    KeyValue kv;
    if (key_value(p, n, &kv) < 0) return -1;
    const Entry *e = kv.key ? lookup(kv.key, kv.key_length) : NULL;
    if (e == NULL) return 0;
    if (e->slot < 0) {
        *flags |= FLAG_FALLBACK;
        return 0;
    }
    if (e->priority >= best[e->slot]) return 0; /* a better-placed name of the field was read already */
    Value v = {0};
    if (kv.value && any_value(kv.value, kv.value_length, &v) < 0) return -1;
    int64_t a, b;
    int read = convert(e, &v, base, &a, &b);
    if (read < 0) *flags |= FLAG_FALLBACK;
    if (read > 0) {
        found[3 * e->slot] = e->name;
        found[3 * e->slot + 1] = a;
        found[3 * e->slot + 2] = b;
        best[e->slot] = e->priority;
    }
    return 0;
}

static int all_zero(const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i]) return 0;
    return 1;
}

static int span(const uint8_t *p, size_t n, const uint8_t *base, int64_t *out, int64_t service, int64_t service_length) {
    int32_t best[MAX_SLOTS]; /* the priority of the value found per slot, INT32_MAX: none yet */
    int64_t found[3 * MAX_SLOTS]; /* per slot: name, a, b */
    for (int i = 0; i < slots; i++) best[i] = INT32_MAX;
    int64_t flags = 0;
    const uint8_t *trace = NULL, *id = NULL, *parent = NULL;
    size_t trace_length = 0, id_length = 0, parent_length = 0;
    out[H_NAME] = out[H_NAME_LENGTH] = out[H_START] = out[H_END] = 0;
    Reader r = {p, p + n};
    Field f;
    int status;
    FOR_FIELDS(r, f, status) {
        if (f.wire != (f.number == 7 || f.number == 8 ? 1 : 2)) continue; /* as protobuf: an unknown field */
        switch (f.number) {
        case 1: trace = f.data, trace_length = f.length; break;
        case 2: id = f.data, id_length = f.length; break;
        case 4: parent = f.data, parent_length = f.length; break;
        case 5:
            out[H_NAME] = f.data - base;
            out[H_NAME_LENGTH] = (int64_t)f.length;
            break;
        case 7:
        case 8: /* fixed64, unsigned: past INT64_MAX it does not fit the output, Python reads it */
            if (f.value > INT64_MAX) flags |= FLAG_FALLBACK;
            out[f.number == 7 ? H_START : H_END] = (int64_t)f.value;
            break;
        case 9:
            if (attribute(f.data, f.length, base, found, best, &flags) < 0) return -1;
            break;
        case 11: flags |= FLAG_FALLBACK; break; /* events: content, flag evaluations, exceptions */
        case 15: {
            Reader s = {f.data, f.data + f.length};
            Field g;
            int inner;
            FOR_FIELDS(s, g, inner) if (g.number == 3 && g.value == STATUS_ERROR) flags |= FLAG_FALLBACK;
            if (inner < 0) return -1;
            break;
        }
        }
    }
    if (status < 0) return -1;
    if (trace_length != 16 || all_zero(trace, 16) || id_length != 8 || all_zero(id, 8) ||
        (parent_length != 0 && parent_length != 8))
        flags |= FLAG_INVALID_IDS;
    out[H_FLAGS] = flags;
    out[H_SPAN_OFFSET] = p - base;
    out[H_SPAN_LENGTH] = (int64_t)n;
    out[H_TRACE_ID] = trace ? trace - base : 0;
    out[H_SPAN_ID] = id ? id - base : 0;
    out[H_PARENT_ID] = parent ? parent - base : 0;
    out[H_PARENT_LENGTH] = (int64_t)parent_length;
    out[H_SERVICE] = service;
    out[H_SERVICE_LENGTH] = service_length;
    int64_t *entry = out + SPAN_HEADER;
    for (int i = 0; i < slots; i++) {
        if (best[i] == INT32_MAX) continue;
        memcpy(entry, found + 3 * i, 3 * sizeof *entry);
        entry += PER_SLOT;
    }
    out[H_PRESENT] = (entry - out - SPAN_HEADER) / PER_SLOT;
    return 0;
}

/* The resource's first service.name attribute: its string, or length 0 (unknown_service). */
static int service_name(const uint8_t *p, size_t n, const uint8_t *base, int64_t *offset, int64_t *length) {
    static const char NAME[] = "service.name";
    Reader r = {p, p + n};
    Field f;
    int status;
    FOR_FIELDS(r, f, status) {
        if (f.number != 1 || f.wire != 2) continue;
        KeyValue kv;
        if (key_value(f.data, f.length, &kv) < 0) return -1;
        if (kv.key_length != sizeof NAME - 1 || memcmp(kv.key, NAME, kv.key_length) != 0) continue;
        Value v = {0};
        if (kv.value && any_value(kv.value, kv.value_length, &v) < 0) return -1;
        if (v.which == STRING_VALUE) *offset = v.data - base, *length = (int64_t)v.length;
        return 0;
    }
    return status;
}

/* Decodes the request into out (capacity spans). Returns the number of spans, -1 on malformed input,
 * or -2 - needed when out is too small. */
int64_t decode(const uint8_t *body, size_t n, int64_t *out, int64_t capacity) {
    int64_t count = 0;
    int64_t stride = SPAN_HEADER + PER_SLOT * slots;
    Reader request = {body, body + n};
    Field rs;
    int status;
    FOR_FIELDS(request, rs, status) {
        if (rs.number != 1 || rs.wire != 2) continue;
        int64_t service = 0, service_length = 0;
        Reader pass = {rs.data, rs.data + rs.length};
        Field f;
        int inner;
        FOR_FIELDS(pass, f, inner) /* the resource first: it may follow its spans on the wire */
            if (f.number == 1 && f.wire == 2 && service_name(f.data, f.length, body, &service, &service_length) < 0)
                return -1;
        if (inner < 0) return -1;
        pass = (Reader){rs.data, rs.data + rs.length};
        FOR_FIELDS(pass, f, inner) {
            if (f.number != 2 || f.wire != 2) continue;
            Reader scope = {f.data, f.data + f.length};
            Field s;
            int deepest;
            FOR_FIELDS(scope, s, deepest) {
                if (s.number != 2 || s.wire != 2) continue;
                if (count < capacity && span(s.data, s.length, body, out + count * stride, service, service_length) < 0)
                    return -1;
                count++;
            }
            if (deepest < 0) return -1;
        }
        if (inner < 0) return -1;
    }
    if (status < 0) return -1;
    return count <= capacity ? count : -2 - count;
}
