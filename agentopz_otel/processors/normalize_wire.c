/* Span attributes straight from an ExportTraceServiceRequest's protobuf bytes, for normalize.

   Reading attributes through protobuf's Python objects makes a wrapper object for every key-value
   pair and every value; that was about half of normalize's cost. scan() walks the bytes once and
   gives, per span in the order the request lists them, what normalize reads, as a tuple (see
   `Scanned` in normalize.py): the span's attribute keys joined by "\0" (the shape its read plans are
   kept by); a list of the values, each as values.decoded gives it (str, bool, int, float; None when
   the value is unset; a tuple of those for an array of them) or the caller's `structured` marker for
   any other array, a key-value list, bytes or a string-table index (read from protobuf then); the
   trace, span and parent span ids, the start and end times, the status code and the number of events.

   It runs only on bytes protobuf has already parsed, so it is not a validator: anything it does not
   expect (a field with another wire type than the schema's, a key, value, id, time or status given
   twice, a string that is not UTF-8, a length past the end) makes it return None, and normalize reads
   that request through protobuf as it always could. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum { VARINT = 0, FIXED64 = 1, LEN = 2, FIXED32 = 5 };

/* AnyValue's oneof members are fields 1 to 8 (8: string_value_strindex). The module exports them as
   ANY_VALUE_FIELDS: normalize does not use the scan with an opentelemetry-proto whose AnyValue has a
   member more, which this code would pass over where protobuf reads it. */
#define ANY_VALUE_LAST_FIELD 8

typedef struct {
    const uint8_t *at;
    const uint8_t *end;
} Reader;

/* One field as read_field() found it. */
typedef struct {
    uint32_t number;
    int wire_type;
    Reader contents; /* a LEN or FIXED64 field's bytes */
    uint64_t varint; /* a VARINT field's value */
} Field;

typedef struct {
    PyObject *spans;      /* the result list */
    PyObject *structured; /* the marker for values protobuf must read */
    char *shape;          /* keys joined by "\0", grown as needed */
    Py_ssize_t shape_capacity;
} Scan;

static int read_varint(Reader *reader, uint64_t *value) {
    uint64_t result = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (reader->at >= reader->end) return -1;
        uint8_t byte = *reader->at++;
        result |= (uint64_t)(byte & 0x7f) << shift;
        if (!(byte & 0x80)) {
            *value = result;
            return 0;
        }
    }
    return -1;
}

/* The next field of `reader`. */
static int read_field(Reader *reader, Field *field) {
    uint64_t tag, length;
    field->varint = 0; /* set for every wire type, so no path reads it unset */
    if (read_varint(reader, &tag) < 0) return -1;
    field->number = (uint32_t)(tag >> 3);
    field->wire_type = (int)(tag & 7);
    switch (field->wire_type) {
    case VARINT:
        return read_varint(reader, &field->varint);
    case FIXED64:
        if (reader->end - reader->at < 8) return -1;
        field->contents.at = reader->at;
        field->contents.end = reader->at + 8;
        reader->at += 8;
        return 0;
    case LEN:
        if (read_varint(reader, &length) < 0 || length > (uint64_t)(reader->end - reader->at)) return -1;
        field->contents.at = reader->at;
        field->contents.end = reader->at + length;
        reader->at += length;
        return 0;
    case FIXED32:
        if (reader->end - reader->at < 4) return -1;
        reader->at += 4;
        return 0;
    default: /* groups are not in this schema */
        return -1;
    }
}

/* A little-endian 8-byte field. */
static uint64_t fixed64(const uint8_t *at) {
    uint64_t bits = 0;
    for (int index = 7; index >= 0; index--) bits = (bits << 8) | at[index];
    return bits;
}

static PyObject *array_value(Reader reader, Scan *scan);

/* One AnyValue as a new reference; NULL without an exception set when the value is unexpected. An
   array is read only outside an array (`in_array` 0): one nested in another is left to protobuf. */
static PyObject *any_value(Reader reader, Scan *scan, int in_array) {
    PyObject *value = NULL;
    int members = 0;
    while (reader.at < reader.end) {
        Field field;
        if (read_field(&reader, &field) < 0) goto unexpected;
        if (field.number < 1 || field.number > ANY_VALUE_LAST_FIELD) continue; /* protobuf ignores it too */
        if (++members > 1) goto unexpected; /* a oneof given twice: rare, left to protobuf */
        if (field.number == 1 && field.wire_type == LEN) {
            Reader text = field.contents;
            value = PyUnicode_DecodeUTF8((const char *)text.at, text.end - text.at, NULL);
            if (value == NULL) {
                if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) return NULL;
                PyErr_Clear(); /* not UTF-8: left to protobuf */
                goto unexpected;
            }
        } else if ((field.number == 2 || field.number == 3) && field.wire_type == VARINT) {
            value = field.number == 2 ? PyBool_FromLong(field.varint != 0)
                                      : PyLong_FromLongLong((long long)(int64_t)field.varint);
        } else if (field.number == 4 && field.wire_type == FIXED64) {
            double number_value;
            uint64_t bits = fixed64(field.contents.at);
            memcpy(&number_value, &bits, sizeof number_value);
            value = PyFloat_FromDouble(number_value);
        } else if (field.number == 5 && field.wire_type == LEN && !in_array) {
            value = array_value(field.contents, scan);
        } else if ((field.number >= 5 && field.number <= 7 && field.wire_type == LEN) ||
                   (field.number == 8 && field.wire_type == VARINT)) {
            /* a nested array, a key-value list, bytes, or an index into a string table */
            Py_INCREF(scan->structured);
            value = scan->structured;
        } else {
            goto unexpected;
        }
        if (value == NULL) return NULL; /* out of memory (the exception stands), or an unexpected array */
    }
    if (value == NULL) Py_RETURN_NONE;
    return value;
unexpected:
    Py_XDECREF(value);
    return NULL;
}

/* Longer arrays are left to protobuf, which reads them only where a field wants them: an embedding
   vector of 1,536 floats is not made into objects for nothing. */
#define MAX_ARRAY_ITEMS 8

/* An ArrayValue (values = 1) of at most MAX_ARRAY_ITEMS items as a tuple of them when each is a str,
   bool, int, float or unset (finish reasons are an array of strings); else the structured marker.
   NULL as any_value(). */
static PyObject *array_value(Reader reader, Scan *scan) {
    PyObject *items = PyList_New(0);
    if (items == NULL) return NULL;
    while (reader.at < reader.end) {
        Field field;
        if (read_field(&reader, &field) < 0) goto unexpected;
        if (field.number != 1) continue; /* protobuf ignores it too */
        if (field.wire_type != LEN) goto unexpected;
        PyObject *item = PyList_GET_SIZE(items) < MAX_ARRAY_ITEMS ? any_value(field.contents, scan, 1)
                                                                   : Py_NewRef(scan->structured);
        if (item == NULL) goto unexpected; /* an exception, if one is set, stands */
        if (item == scan->structured) {
            Py_DECREF(items);
            return item;
        }
        int appended = PyList_Append(items, item);
        Py_DECREF(item);
        if (appended < 0) goto unexpected;
    }
    PyObject *tuple = PyList_AsTuple(items);
    Py_DECREF(items);
    return tuple;
unexpected:
    Py_DECREF(items);
    return NULL;
}

static int append_key(Scan *scan, Py_ssize_t *used, const uint8_t *key, Py_ssize_t length, int first) {
    Py_ssize_t needed = *used + length + 1;
    if (needed > scan->shape_capacity) {
        Py_ssize_t capacity = needed * 2;
        char *grown = PyMem_Realloc(scan->shape, capacity);
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        scan->shape = grown;
        scan->shape_capacity = capacity;
    }
    if (!first) scan->shape[(*used)++] = '\0';
    if (length > 0) memcpy(scan->shape + *used, key, length);
    *used += length;
    return 0;
}

/* Span.status's code (Status.code = 3); -1 when the status is not as expected. */
static int64_t status_code(Reader reader) {
    int64_t code = 0;
    int given = 0;
    while (reader.at < reader.end) {
        Field field;
        if (read_field(&reader, &field) < 0) return -1;
        if (field.number == 3) {
            if (field.wire_type != VARINT || given++) return -1;
            code = (int32_t)field.varint;
            if (code < 0) return -1;
        } else if (field.number == 2 && field.wire_type != LEN) {
            return -1;
        }
    }
    return code;
}

static const char NO_BYTES[] = "";

/* Returns 0 when done, 1 when the request is left to protobuf, -1 on an exception. */
static int span(Reader reader, Scan *scan) {
    PyObject *values = PyList_New(0);
    if (values == NULL) return -1;
    Py_ssize_t used = 0, events = 0;
    int result = 1;
    /* Span fields 1 trace_id, 2 span_id, 4 parent_span_id (bytes), 7 and 8 the times (fixed64),
       15 status: each at most once here (protobuf would keep the last, or merge a status). */
    Reader ids[5] = {{NULL, NULL}};
    Reader times[9] = {{NULL, NULL}};
    int seen[16] = {0};
    uint64_t start = 0, end = 0;
    int64_t code = 0;
    while (reader.at < reader.end) {
        Field field;
        if (read_field(&reader, &field) < 0) goto done;
        if (field.number == 1 || field.number == 2 || field.number == 4) {
            if (field.wire_type != LEN || seen[field.number]++) goto done;
            ids[field.number] = field.contents;
            continue;
        }
        if (field.number == 7 || field.number == 8) {
            if (field.wire_type != FIXED64 || seen[field.number]++) goto done;
            times[field.number] = field.contents;
            continue;
        }
        if (field.number == 11) {
            if (field.wire_type != LEN) goto done;
            events++;
            continue;
        }
        if (field.number == 15) {
            if (field.wire_type != LEN || seen[field.number]++) goto done;
            if ((code = status_code(field.contents)) < 0) goto done;
            continue;
        }
        if (field.number != 9) continue;
        if (field.wire_type != LEN) goto done;
        /* One KeyValue: its key and value, each at most once. */
        Reader key = {NULL, NULL};
        PyObject *value = NULL;
        int keys = 0, given = 0;
        Reader pair = field.contents;
        while (pair.at < pair.end) {
            Field member;
            if (read_field(&pair, &member) < 0) goto bad_pair;
            if (member.number == 1) {
                if (member.wire_type != LEN || keys++) goto bad_pair;
                key = member.contents;
            } else if (member.number == 2) {
                if (member.wire_type != LEN || given++) goto bad_pair;
                value = any_value(member.contents, scan, 0);
                if (value == NULL) {
                    if (PyErr_Occurred()) result = -1;
                    goto bad_pair;
                }
            }
        }
        if (value == NULL) {
            Py_INCREF(Py_None);
            value = Py_None;
        }
        if (append_key(scan, &used, key.at, key.end - key.at, PyList_GET_SIZE(values) == 0) < 0 ||
            PyList_Append(values, value) < 0) {
            Py_DECREF(value);
            result = -1;
            goto done;
        }
        Py_DECREF(value);
        continue;
    bad_pair:
        Py_XDECREF(value);
        goto done;
    }
    {
        PyObject *shape = PyUnicode_DecodeUTF8(scan->shape, used, NULL);
        if (shape == NULL) {
            if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) PyErr_Clear(); else result = -1;
            goto done;
        }
        start = times[7].at == NULL ? 0 : fixed64(times[7].at);
        end = times[8].at == NULL ? 0 : fixed64(times[8].at);
        PyObject *entry = Py_BuildValue(
            "(NOy#y#y#KKLn)", shape, values,
            ids[1].at ? (const char *)ids[1].at : NO_BYTES, (Py_ssize_t)(ids[1].end - ids[1].at),
            ids[2].at ? (const char *)ids[2].at : NO_BYTES, (Py_ssize_t)(ids[2].end - ids[2].at),
            ids[4].at ? (const char *)ids[4].at : NO_BYTES, (Py_ssize_t)(ids[4].end - ids[4].at),
            (unsigned long long)start, (unsigned long long)end, (long long)code, events);
        if (entry == NULL || PyList_Append(scan->spans, entry) < 0) {
            Py_XDECREF(entry);
            result = -1;
            goto done;
        }
        Py_DECREF(entry);
        result = 0;
    }
done:
    Py_DECREF(values);
    return result;
}

/* Walks the repeated message field `wanted` of each message in `reader`; 0, 1 or -1 as span(). */
static int nested(Reader reader, Scan *scan, uint32_t wanted, int depth) {
    while (reader.at < reader.end) {
        Field field;
        if (read_field(&reader, &field) < 0) return 1;
        if (field.number != wanted) continue;
        if (field.wire_type != LEN) return 1;
        /* ExportTraceServiceRequest.resource_spans = 1, ResourceSpans.scope_spans = 2, ScopeSpans.spans = 2 */
        int result = depth == 2 ? span(field.contents, scan) : nested(field.contents, scan, 2, depth + 1);
        if (result != 0) return result;
    }
    return 0;
}

static PyObject *scan(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    Py_buffer wire;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "scan(wire, structured) takes two arguments");
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &wire, PyBUF_SIMPLE) < 0) return NULL;
    Scan state = {PyList_New(0), args[1], NULL, 0};
    int result = -1;
    if (state.spans != NULL) {
        Reader reader = {wire.buf, (const uint8_t *)wire.buf + wire.len};
        result = nested(reader, &state, 1, 0);
    }
    PyMem_Free(state.shape);
    PyBuffer_Release(&wire);
    if (result == 0) return state.spans;
    Py_XDECREF(state.spans);
    if (result < 0) return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL,
     "scan(wire, structured) -> [(shape, values), ...] per span, or None to read it through protobuf"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "normalize_wire", NULL, 0, methods};

PyMODINIT_FUNC PyInit_normalize_wire(void) {
    PyObject *created = PyModule_Create(&module);
    if (created == NULL) return NULL;
    PyObject *fields = PyTuple_New(ANY_VALUE_LAST_FIELD);
    for (Py_ssize_t index = 0; fields != NULL && index < ANY_VALUE_LAST_FIELD; index++) {
        PyObject *number = PyLong_FromSsize_t(index + 1);
        if (number == NULL) Py_CLEAR(fields); else PyTuple_SET_ITEM(fields, index, number);
    }
    if (fields == NULL || PyModule_AddObject(created, "ANY_VALUE_FIELDS", fields) < 0) {
        Py_XDECREF(fields);
        Py_DECREF(created);
        return NULL;
    }
    return created;
}
