/* The detector's per-record work in C (docs/pipeline.md, "One batch at a time"):
 *
 * - decode_rows: TransactionCreated records into rows (`feature_batch.decode_rows_in_python`);
 * - group_rows: a batch's rows by account, with each event id's hash (`state.event_id_hash`);
 * - model_results: the reasons of the rows where no rule fired (`scoring.ModelScorer`);
 * - encode_decisions: FraudDecision records (`DecisionWriter.records_in_python`);
 * - append_if_appendable: a batch's events of one account appended to its history when they
 *   can be computed column-wise (`feature_batch._appendable`, `AccountHistory.append_in_order`);
 * - customer_columns: the customer features of a batch's appended events (`features.py`'s
 *   `record_and_compute`, one event at a time).
 *
 * The Python functions named are their definition; tests/unit/test_per_record_extension.py
 * checks that both give the same rows, groups, reasons, bytes and histories, and
 * tests/unit/test_feature_batch.py the same features.
 *
 * The reader takes only what it can read exactly as the protobuf library would: a record with a
 * field it does not expect the way it comes (a repeated field, an unexpected wire type, a group,
 * a nested decision, text that is not UTF-8) goes to the caller's fallback, which reads it the
 * general way and decides what it is (a row, a watermark, a poison record).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* A tuple of atomic values (numbers, text, bytes, None, or such tuples) can hold no reference
 * cycle: the cycle collector need not walk it. Python leaves named tuples to its collector for
 * their whole life; untracked, a batch's rows, reasons and results cost its collections nothing. */
static PyObject *untracked(PyObject *tuple) {
    if (tuple != NULL) {
        PyObject_GC_UnTrack(tuple);
    }
    return tuple;
}

/* A `type` tuple holding `items`, whose references it takes (also when it fails). */
static PyObject *new_tuple(PyTypeObject *type, PyObject **items, Py_ssize_t size) {
    PyObject *tuple = type->tp_alloc(type, size);
    if (tuple == NULL) {
        for (Py_ssize_t i = 0; i < size; i++) {
            Py_DECREF(items[i]);
        }
        return NULL;
    }
    for (Py_ssize_t i = 0; i < size; i++) {
        PyTuple_SET_ITEM(tuple, i, items[i]);
    }
    return tuple;
}

/* ---------------------------------------------------------------------------------------- */
/* Reading                                                                                   */

typedef struct {
    const uint8_t *p;
    const uint8_t *end;
} Reader;

typedef struct {
    const uint8_t *data;
    Py_ssize_t size;
    int seen;
} Span;

/* A base-128 varint of at most 10 bytes, the tenth holding only the 64th bit. */
static int read_varint(Reader *r, uint64_t *out) {
    uint64_t value = 0;
    for (int shift = 0; shift < 70; shift += 7) {
        if (r->p >= r->end) {
            return 0;
        }
        uint8_t byte = *r->p++;
        if (shift == 63 && byte > 1) {
            return 0;
        }
        value |= (uint64_t)(byte & 0x7F) << shift;
        if (!(byte & 0x80)) {
            *out = value;
            return 1;
        }
    }
    return 0;
}

/* A tag or a length: upb reads these in at most 5 bytes and refuses larger values. */
static int read_varint32(Reader *r, uint64_t *out) {
    const uint8_t *start = r->p;
    return read_varint(r, out) && r->p - start <= 5 && *out < 0x7FFFFFFFu;
}

static int read_tag(Reader *r, uint32_t *field, uint32_t *wire_type) {
    uint64_t tag;
    if (!read_varint32(r, &tag)) {
        return 0;
    }
    *field = (uint32_t)(tag >> 3);
    *wire_type = (uint32_t)(tag & 7);
    return *field != 0;
}

static int read_span(Reader *r, Span *span) {
    uint64_t size;
    if (!read_varint32(r, &size) || size > (uint64_t)(r->end - r->p)) {
        return 0;
    }
    span->data = r->p;
    span->size = (Py_ssize_t)size;
    r->p += size;
    return 1;
}

/* Skips a field of a wire type that carries no group. */
static int skip_field(Reader *r, uint32_t wire_type) {
    uint64_t ignored;
    Span span;
    switch (wire_type) {
    case 0:
        return read_varint(r, &ignored);
    case 1:
        if (r->end - r->p < 8) {
            return 0;
        }
        r->p += 8;
        return 1;
    case 2:
        return read_span(r, &span);
    case 5:
        if (r->end - r->p < 4) {
            return 0;
        }
        r->p += 4;
        return 1;
    default:
        return 0;
    }
}

/* A string field once: its bytes. */
static int take_once(Reader *r, uint32_t wire_type, Span *span) {
    if (wire_type != 2 || span->seen) {
        return 0;
    }
    span->seen = 1;
    return read_span(r, span);
}

static int is_utf8(const Span *span) {
    for (Py_ssize_t i = 0; i < span->size; i++) {
        if (span->data[i] & 0x80) {
            PyObject *text = PyUnicode_DecodeUTF8((const char *)span->data, span->size, "strict");
            if (text == NULL) {
                PyErr_Clear();
                return 0;
            }
            Py_DECREF(text);
            return 1;
        }
    }
    return 1;
}

typedef struct {
    int64_t seconds;
    int32_t nanos;
} Timestamp;

/* A google.protobuf.Timestamp holding no field but its two, each at most once. */
static int read_timestamp(const Span *span, Timestamp *out) {
    Reader r = {span->data, span->data + span->size};
    int seen_seconds = 0, seen_nanos = 0;
    out->seconds = 0;
    out->nanos = 0;
    while (r.p < r.end) {
        uint32_t field, wire_type;
        uint64_t value;
        if (!read_tag(&r, &field, &wire_type) || wire_type != 0 || !read_varint(&r, &value)) {
            return 0;
        }
        if (field == 1 && !seen_seconds) {
            seen_seconds = 1;
            out->seconds = (int64_t)value;
        } else if (field == 2 && !seen_nanos) {
            seen_nanos = 1;
            out->nanos = (int32_t)(uint32_t)value;
        } else {
            return 0;
        }
    }
    return 1;
}

typedef struct {
    Span event_id, transaction, transaction_id, account_id, currency, terminal_id;
    Span occurred_at, accepted_at;
    int64_t amount_minor;
    int seen_amount;
} Event;

/* TransactionCreated's fields that a row needs; 0 when the record needs the general reader. */
static int read_event(const uint8_t *data, Py_ssize_t size, Event *event) {
    memset(event, 0, sizeof(*event));
    Reader r = {data, data + size};
    while (r.p < r.end) {
        uint32_t field, wire_type;
        if (!read_tag(&r, &field, &wire_type)) {
            return 0;
        }
        int ok;
        switch (field) {
        case 1:
            ok = take_once(&r, wire_type, &event->event_id);
            break;
        case 2:
            ok = take_once(&r, wire_type, &event->transaction);
            break;
        default:
            ok = skip_field(&r, wire_type);
        }
        if (!ok) {
            return 0;
        }
    }
    if (!event->transaction.seen) {
        return 0;
    }
    Reader t = {event->transaction.data, event->transaction.data + event->transaction.size};
    Span other;
    while (t.p < t.end) {
        uint32_t field, wire_type;
        if (!read_tag(&t, &field, &wire_type)) {
            return 0;
        }
        int ok;
        switch (field) {
        case 1:
            ok = take_once(&t, wire_type, &event->transaction_id);
            break;
        case 4:
            ok = take_once(&t, wire_type, &event->account_id);
            break;
        case 5: {
            uint64_t value = 0;
            ok = wire_type == 0 && !event->seen_amount && read_varint(&t, &value);
            event->seen_amount = 1;
            event->amount_minor = (int64_t)value;
            break;
        }
        case 6:
            ok = take_once(&t, wire_type, &event->currency);
            break;
        case 7:
            ok = take_once(&t, wire_type, &event->terminal_id);
            break;
        case 15:
            ok = take_once(&t, wire_type, &event->occurred_at);
            break;
        case 16:
            ok = take_once(&t, wire_type, &event->accepted_at);
            break;
        case 2: case 3: case 8: case 9: case 10: case 11: case 13: case 14:
            /* Strings the row does not hold: the protobuf library checks their UTF-8 too. */
            other.seen = 0;
            ok = take_once(&t, wire_type, &other) && is_utf8(&other);
            break;
        case 12: case 17: {
            uint64_t ignored;
            ok = wire_type == 0 && read_varint(&t, &ignored);
            break;
        }
        case 18:
            ok = 0; /* A nested decision: the general reader checks it. */
            break;
        default:
            ok = skip_field(&t, wire_type);
        }
        if (!ok) {
            return 0;
        }
    }
    return 1;
}

/* ---------------------------------------------------------------------------------------- */
/* Writing                                                                                   */

typedef struct {
    uint8_t *data;
    Py_ssize_t size;
    Py_ssize_t capacity;
} Buffer;

static int reserve(Buffer *b, Py_ssize_t more) {
    if (b->size + more <= b->capacity) {
        return 1;
    }
    Py_ssize_t capacity = b->capacity ? b->capacity : 256;
    while (capacity < b->size + more) {
        capacity *= 2;
    }
    uint8_t *data = PyMem_Realloc(b->data, (size_t)capacity);
    if (data == NULL) {
        PyErr_NoMemory();
        return 0;
    }
    b->data = data;
    b->capacity = capacity;
    return 1;
}

static int put_bytes(Buffer *b, const void *data, Py_ssize_t size) {
    if (!reserve(b, size)) {
        return 0;
    }
    memcpy(b->data + b->size, data, (size_t)size);
    b->size += size;
    return 1;
}

static int put_byte(Buffer *b, uint8_t byte) {
    return put_bytes(b, &byte, 1);
}

static int put_varint(Buffer *b, uint64_t value) {
    uint8_t out[10];
    int n = 0;
    while (value > 0x7F) {
        out[n++] = (uint8_t)(value & 0x7F) | 0x80;
        value >>= 7;
    }
    out[n++] = (uint8_t)value;
    return put_bytes(b, out, n);
}

static int put_double(Buffer *b, uint8_t tag, double value) {
    uint8_t out[9];
    out[0] = tag;
    memcpy(out + 1, &value, 8); /* little-endian machines only: checked at import */
    return put_bytes(b, out, 9);
}

static int put_field(Buffer *b, uint8_t tag, const char *data, Py_ssize_t size) {
    return put_byte(b, tag) && put_varint(b, (uint64_t)size) && put_bytes(b, data, size);
}

static Py_ssize_t varint_size(uint64_t value) {
    Py_ssize_t n = 1;
    while (value > 0x7F) {
        value >>= 7;
        n++;
    }
    return n;
}

/* A Timestamp as the protobuf library writes it: fields left out when zero. */
static PyObject *timestamp_bytes(const Timestamp *ts) {
    Buffer b = {0};
    PyObject *result = NULL;
    if ((ts->seconds == 0 || (put_byte(&b, 0x08) && put_varint(&b, (uint64_t)ts->seconds))) &&
        (ts->nanos == 0 ||
         (put_byte(&b, 0x10) && put_varint(&b, (uint64_t)(int64_t)ts->nanos)))) {
        result = PyBytes_FromStringAndSize((const char *)b.data, b.size);
    }
    PyMem_Free(b.data);
    return result;
}

/* ---------------------------------------------------------------------------------------- */
/* decode_rows                                                                               */

static PyObject *str_headers, *str_value, *str_partition, *str_offset;

/* Python's a // b. */
static int64_t floor_div(int64_t a, int64_t b) {
    int64_t q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

/* seconds * 1000 + nanos // 1_000_000, or 0 when int64 cannot hold it. */
static int occurred_ms(const Timestamp *ts, int64_t *out) {
    int64_t ms;
    return !__builtin_mul_overflow(ts->seconds, (int64_t)1000, &ms) &&
           !__builtin_add_overflow(ms, floor_div(ts->nanos, 1000000), out);
}

/* The row of a record whose headers and value the fast path reads; NULL with no error set when
 * the record needs the fallback. */
static PyObject *fast_row(PyObject *message, PyTypeObject *row_type, PyObject *event_header,
                          PyObject *schema_header, PyObject *version_header) {
    PyObject *headers = PyObject_CallMethodNoArgs(message, str_headers);
    if (headers == NULL) {
        return NULL;
    }
    int layout = PyList_CheckExact(headers) && PyList_GET_SIZE(headers) == 3;
    if (layout) {
        PyObject *first = PyList_GET_ITEM(headers, 0);
        int equal = PyObject_RichCompareBool(PyList_GET_ITEM(headers, 1), schema_header, Py_EQ);
        if (equal == 1) {
            equal = PyObject_RichCompareBool(PyList_GET_ITEM(headers, 2), version_header, Py_EQ);
        }
        if (equal == 1) {
            equal = PyTuple_Check(first) && PyTuple_GET_SIZE(first) >= 1
                        ? PyObject_RichCompareBool(PyTuple_GET_ITEM(first, 0), event_header, Py_EQ)
                        : 0;
        }
        if (equal < 0) {
            Py_DECREF(headers);
            return NULL;
        }
        layout = equal;
    }
    Py_DECREF(headers);
    if (!layout) {
        return NULL;
    }
    PyObject *value = PyObject_CallMethodNoArgs(message, str_value);
    if (value == NULL) {
        return NULL;
    }
    Event event;
    Timestamp occurred, accepted;
    int64_t occurred_at_ms;
    if (!PyBytes_CheckExact(value) ||
        !read_event((const uint8_t *)PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value), &event) ||
        /* `check_transaction`'s condition for a valid transaction */
        event.event_id.size == 0 || event.transaction_id.size == 0 ||
        event.account_id.size == 0 || event.currency.size == 0 || event.amount_minor < 0 ||
        !event.occurred_at.seen || !event.accepted_at.seen ||
        !read_timestamp(&event.occurred_at, &occurred) ||
        !read_timestamp(&event.accepted_at, &accepted) ||
        /* milliseconds that int64 holds (else Python's integers do it) */
        !occurred_ms(&occurred, &occurred_at_ms)) {
        Py_DECREF(value);
        return NULL;
    }
    /* The texts first: one that is not UTF-8 sends the record to the fallback. */
    PyObject *items[12] = {NULL};
    const Span *texts[5] = {&event.event_id, &event.transaction_id, &event.account_id,
                            &event.currency, &event.terminal_id};
    const int slots[5] = {1, 2, 3, 5, 6};
    for (int i = 0; i < 5; i++) {
        items[slots[i]] =
            PyUnicode_DecodeUTF8((const char *)texts[i]->data, texts[i]->size, "strict");
        if (items[slots[i]] == NULL) {
            for (int j = 0; j < i; j++) {
                Py_DECREF(items[slots[j]]);
            }
            Py_DECREF(value);
            if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
                PyErr_Clear();
            }
            return NULL;
        }
    }
    Py_DECREF(value);
    items[0] = PyObject_CallMethodNoArgs(message, str_partition);
    items[4] = items[0] ? PyLong_FromLongLong(event.amount_minor) : NULL;
    items[7] = items[4] ? PyLong_FromLongLong(occurred_at_ms) : NULL;
    items[8] = items[7] ? PyFloat_FromDouble((double)accepted.seconds +
                                             (double)accepted.nanos / 1e9)
                        : NULL;
    items[9] = items[8] ? timestamp_bytes(&occurred) : NULL;
    items[10] = items[9] ? timestamp_bytes(&accepted) : NULL;
    items[11] = items[10] ? PyObject_CallMethodNoArgs(message, str_offset) : NULL;
    if (items[11] == NULL) {
        for (int i = 0; i < 12; i++) {
            Py_XDECREF(items[i]);
        }
        return NULL;
    }
    return untracked(new_tuple(row_type, items, 12));
}

static PyObject *decode_rows(PyObject *module, PyObject *args) {
    PyObject *records, *fallback, *event_header, *schema_header, *version_header;
    PyTypeObject *row_type;
    if (!PyArg_ParseTuple(args, "OOO!OOO", &records, &fallback, &PyType_Type, &row_type,
                          &event_header, &schema_header, &version_header)) {
        return NULL;
    }
    if (!PyType_IsSubtype(row_type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "row_type must be a tuple type");
        return NULL;
    }
    PyObject *sequence = PySequence_Fast(records, "records must be a sequence");
    if (sequence == NULL) {
        return NULL;
    }
    PyObject *rows = PyList_New(0);
    if (rows == NULL) {
        Py_DECREF(sequence);
        return NULL;
    }
    /* The fallback is Python code: the list may change under it, as under a for loop. */
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(sequence); i++) {
        PyObject *message = PySequence_Fast_GET_ITEM(sequence, i);
        Py_INCREF(message);
        PyObject *row = fast_row(message, row_type, event_header, schema_header, version_header);
        if (row == NULL && !PyErr_Occurred()) {
            row = PyObject_CallOneArg(fallback, message);
        }
        Py_DECREF(message);
        if (row == NULL) {
            goto error;
        }
        if (row == Py_None) {
            Py_DECREF(row);
            continue;
        }
        int appended = PyList_Append(rows, row);
        Py_DECREF(row);
        if (appended < 0) {
            goto error;
        }
    }
    Py_DECREF(sequence);
    return rows;
error:
    Py_DECREF(sequence);
    Py_DECREF(rows);
    return NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* encode_decisions                                                                          */

/* A string field, or nothing for the empty string (proto3's default). */
static int put_text(Buffer *b, uint8_t tag, PyObject *text) {
    Py_ssize_t size;
    const char *data = PyUnicode_AsUTF8AndSize(text, &size);
    if (data == NULL) {
        return 0;
    }
    return size == 0 || put_field(b, tag, data, size);
}

/* One Reason (code, description, contribution), as `decision_wire._reason` writes it. */
static int put_reason(Buffer *b, PyObject *reason) {
    if (!PyTuple_Check(reason) || PyTuple_GET_SIZE(reason) != 3) {
        PyErr_SetString(PyExc_TypeError, "a reason must be a (code, description, share) tuple");
        return 0;
    }
    Py_ssize_t code_size, text_size;
    const char *code = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(reason, 0), &code_size);
    if (code == NULL) {
        return 0;
    }
    const char *text = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(reason, 1), &text_size);
    if (text == NULL) {
        return 0;
    }
    double contribution = PyFloat_AsDouble(PyTuple_GET_ITEM(reason, 2));
    if (contribution == -1.0 && PyErr_Occurred()) {
        return 0;
    }
    Py_ssize_t body = (code_size ? 1 + varint_size((uint64_t)code_size) + code_size : 0) +
                      (text_size ? 1 + varint_size((uint64_t)text_size) + text_size : 0) +
                      (contribution != 0.0 ? 9 : 0);
    return put_byte(b, 0x3a) && put_varint(b, (uint64_t)body) &&
           (code_size == 0 || put_field(b, 0x0a, code, code_size)) &&
           (text_size == 0 || put_field(b, 0x12, text, text_size)) &&
           (contribution == 0.0 || put_double(b, 0x19, contribution));
}

/* A decision's value, fields in number order; 0 with an exception set on failure. */
static int put_decision(Buffer *b, PyObject *row, PyObject *result, PyObject *outcome_object,
                        PyObject *decision_id, PyObject *versions_and_time,
                        PyObject *shadow_version) {
    if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) < 11 || !PyTuple_Check(result) ||
        PyTuple_GET_SIZE(result) < 3 || !PyBytes_Check(decision_id) ||
        !PyBytes_Check(PyTuple_GET_ITEM(row, 9)) || !PyBytes_Check(PyTuple_GET_ITEM(row, 10))) {
        PyErr_SetString(PyExc_TypeError, "rows, results or decision ids of the wrong type");
        return 0;
    }
    double score = PyFloat_AsDouble(PyTuple_GET_ITEM(result, 0));
    if (score == -1.0 && PyErr_Occurred()) {
        return 0;
    }
    long long outcome = PyLong_AsLongLong(outcome_object);
    if (outcome == -1 && PyErr_Occurred()) {
        return 0;
    }
    PyObject *reasons = PySequence_Fast(PyTuple_GET_ITEM(result, 1), "reasons must be a sequence");
    if (reasons == NULL) {
        return 0;
    }
    int ok = put_field(b, 0x0a, PyBytes_AS_STRING(decision_id), PyBytes_GET_SIZE(decision_id)) &&
             put_text(b, 0x12, PyTuple_GET_ITEM(row, 1)) &&
             put_text(b, 0x1a, PyTuple_GET_ITEM(row, 2)) &&
             put_text(b, 0x22, PyTuple_GET_ITEM(row, 3)) &&
             (score == 0.0 || put_double(b, 0x29, score)) &&
             (outcome == 0 || (put_byte(b, 0x30) && put_varint(b, (uint64_t)outcome)));
    for (Py_ssize_t i = 0; ok && i < PySequence_Fast_GET_SIZE(reasons); i++) {
        ok = put_reason(b, PySequence_Fast_GET_ITEM(reasons, i));
    }
    Py_DECREF(reasons);
    if (!ok) {
        return 0;
    }
    PyObject *accepted_at = PyTuple_GET_ITEM(row, 10), *occurred_at = PyTuple_GET_ITEM(row, 9);
    ok = put_bytes(b, PyBytes_AS_STRING(versions_and_time), PyBytes_GET_SIZE(versions_and_time)) &&
         put_field(b, 0x5a, PyBytes_AS_STRING(accepted_at), PyBytes_GET_SIZE(accepted_at)) &&
         put_field(b, 0x62, PyBytes_AS_STRING(occurred_at), PyBytes_GET_SIZE(occurred_at));
    PyObject *shadow = PyTuple_GET_ITEM(result, 2);
    if (ok && shadow != Py_None) {
        double shadow_score = PyFloat_AsDouble(shadow);
        if (shadow_score == -1.0 && PyErr_Occurred()) {
            return 0;
        }
        ok = (shadow_score == 0.0 || put_double(b, 0x71, shadow_score)) &&
             put_bytes(b, PyBytes_AS_STRING(shadow_version), PyBytes_GET_SIZE(shadow_version));
    }
    return ok;
}

static PyObject *encode_decisions(PyObject *module, PyObject *args) {
    PyObject *rows, *results, *outcomes, *decision_ids, *versions_and_time, *shadow_version;
    PyObject *topic, *event_header, *schema_headers;
    PyTypeObject *record_type;
    if (!PyArg_ParseTuple(args, "OOOOO!O!OO!OO!", &rows, &results, &outcomes, &decision_ids,
                          &PyBytes_Type, &versions_and_time, &PyBytes_Type, &shadow_version,
                          &topic, &PyType_Type, &record_type, &event_header, &PyTuple_Type,
                          &schema_headers)) {
        return NULL;
    }
    if (!PyType_IsSubtype(record_type, &PyTuple_Type) || PyTuple_GET_SIZE(schema_headers) != 2) {
        PyErr_SetString(PyExc_TypeError, "record_type must be a tuple type, two schema headers");
        return NULL;
    }
    /* Copies: converting an item may run Python code, which could change the caller's lists. */
    PyObject *all[4] = {
        PySequence_List(rows),
        PySequence_List(results),
        PySequence_List(outcomes),
        PySequence_List(decision_ids),
    };
    PyObject *records = NULL;
    Buffer b = {0};
    if (!all[0] || !all[1] || !all[2] || !all[3]) {
        goto done;
    }
    Py_ssize_t count = PyList_GET_SIZE(all[0]);
    for (int i = 1; i < 4; i++) {
        if (PyList_GET_SIZE(all[i]) != count) {
            PyErr_SetString(PyExc_ValueError, "rows, results, outcomes and ids differ in length");
            goto done;
        }
    }
    records = PyList_New(count);
    if (records == NULL) {
        goto done;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *row = PyList_GET_ITEM(all[0], i);
        PyObject *decision_id = PyList_GET_ITEM(all[3], i);
        b.size = 0;
        if (!put_decision(&b, row, PyList_GET_ITEM(all[1], i), PyList_GET_ITEM(all[2], i),
                          decision_id, versions_and_time, shadow_version)) {
            Py_CLEAR(records);
            goto done;
        }
        /* Each made only once the one before it was (no call with an exception set). */
        PyObject *key = PyUnicode_AsUTF8String(PyTuple_GET_ITEM(row, 3));
        PyObject *value = key ? PyBytes_FromStringAndSize((const char *)b.data, b.size) : NULL;
        PyObject *event_id = value ? untracked(PyTuple_Pack(2, event_header, decision_id)) : NULL;
        PyObject *headers = event_id ? PyList_New(3) : NULL;
        PyObject *partition = headers ? PyLong_FromLong(-1) : NULL;
        if (!partition) {
            Py_XDECREF(key);
            Py_XDECREF(value);
            Py_XDECREF(event_id);
            Py_XDECREF(headers);
            Py_CLEAR(records);
            goto done;
        }
        PyList_SET_ITEM(headers, 0, event_id);
        for (int h = 0; h < 2; h++) {
            PyList_SET_ITEM(headers, h + 1, Py_NewRef(PyTuple_GET_ITEM(schema_headers, h)));
        }
        /* The header list holds untracked tuples and is never changed: like the record that
         * holds it, it can be in no cycle. Tracked, a checkpoint interval's records (kept until
         * their delivery is confirmed) were walked by every collection of the older
         * generations. */
        PyObject_GC_UnTrack(headers);
        PyObject *items[5] = {Py_NewRef(topic), key, value, headers, partition};
        PyObject *record = untracked(new_tuple(record_type, items, 5));
        if (!record) {
            Py_CLEAR(records);
            goto done;
        }
        PyList_SET_ITEM(records, i, record);
    }
done:
    for (int i = 0; i < 4; i++) {
        Py_XDECREF(all[i]);
    }
    PyMem_Free(b.data);
    return records;
}

/* ---------------------------------------------------------------------------------------- */
/* model_results                                                                             */

/* "label" + format(value, "g") */
static PyObject *described(PyObject *label, PyObject *value_object) {
    if (!PyUnicode_Check(label)) {
        PyErr_SetString(PyExc_TypeError, "a reason label must be a str");
        return NULL;
    }
    double value = PyFloat_AsDouble(value_object);
    if (value == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    char *text = PyOS_double_to_string(value, 'g', 6, 0, NULL);
    if (text == NULL) {
        return NULL;
    }
    PyObject *result = PyUnicode_FromFormat("%U%s", label, text);
    PyMem_Free(text);
    return result;
}

/* The feature reasons of one row: (code, "label" + value, fraction) for each kept column of the
 * row's `width` entries from `first` on in the flat lists. */
static PyObject *row_reasons(Py_ssize_t first, Py_ssize_t width, PyObject *columns,
                             PyObject *fractions, PyObject *values, PyObject *keep,
                             PyObject *codes, PyObject *labels, PyTypeObject *reason_type) {
    Py_ssize_t kept = 0;
    PyObject *reasons = PyTuple_New(width);
    if (reasons == NULL) {
        return NULL;
    }
    for (Py_ssize_t j = first; j < first + width; j++) {
        int keep_it = PyObject_IsTrue(PyList_GET_ITEM(keep, j));
        if (keep_it < 0) {
            goto error;
        }
        if (!keep_it) {
            continue;
        }
        Py_ssize_t column = PyLong_AsSsize_t(PyList_GET_ITEM(columns, j));
        if (column == -1 && PyErr_Occurred()) {
            goto error;
        }
        if (column < 0 || column >= PyList_GET_SIZE(codes) || column >= PyList_GET_SIZE(labels)) {
            PyErr_SetString(PyExc_IndexError, "a reason's column has no code or label");
            goto error;
        }
        PyObject *items[3];
        items[0] = PyList_GET_ITEM(codes, column);
        Py_INCREF(items[0]);
        items[1] = described(PyList_GET_ITEM(labels, column), PyList_GET_ITEM(values, j));
        if (items[1] == NULL) {
            Py_DECREF(items[0]);
            goto error;
        }
        items[2] = PyList_GET_ITEM(fractions, j);
        Py_INCREF(items[2]);
        PyObject *reason = untracked(new_tuple(reason_type, items, 3));
        if (reason == NULL) {
            goto error;
        }
        PyTuple_SET_ITEM(reasons, kept++, reason);
    }
    if (kept < width && _PyTuple_Resize(&reasons, kept) < 0) {
        return NULL;
    }
    return untracked(reasons);
error:
    Py_DECREF(reasons);
    return NULL;
}

static PyObject *model_results_of(PyObject *scores, PyObject *shadow_scores, Py_ssize_t width,
                                  PyObject *columns, PyObject *fractions, PyObject *values,
                                  PyObject *keep, PyObject *codes, PyObject *labels,
                                  PyObject *skip, PyTypeObject *result_type,
                                  PyTypeObject *reason_type);

static PyObject *model_results(PyObject *module, PyObject *args) {
    PyObject *scores, *shadow_scores, *columns, *fractions, *values, *keep, *codes, *labels;
    PyObject *skip;
    Py_ssize_t width;
    PyTypeObject *result_type, *reason_type;
    if (!PyArg_ParseTuple(args, "O!OnO!O!O!O!O!O!OO!O!", &PyList_Type, &scores, &shadow_scores,
                          &width, &PyList_Type, &columns, &PyList_Type, &fractions, &PyList_Type,
                          &values, &PyList_Type, &keep, &PyList_Type, &codes, &PyList_Type,
                          &labels, &skip, &PyType_Type, &result_type, &PyType_Type,
                          &reason_type)) {
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(scores);
    if (!PyType_IsSubtype(result_type, &PyTuple_Type) ||
        !PyType_IsSubtype(reason_type, &PyTuple_Type) || width < 0 ||
        (width > 0 && count > PY_SSIZE_T_MAX / width) ||
        (shadow_scores != Py_None &&
         (!PyList_CheckExact(shadow_scores) || PyList_GET_SIZE(shadow_scores) != count)) ||
        PyList_GET_SIZE(columns) != count * width || PyList_GET_SIZE(fractions) != count * width ||
        PyList_GET_SIZE(values) != count * width || PyList_GET_SIZE(keep) != count * width) {
        PyErr_SetString(PyExc_TypeError, "model_results: arguments of the wrong type or length");
        return NULL;
    }
    /* Copies: converting an item may run Python code, which could change the caller's lists. */
    PyObject *given[8] = {scores, shadow_scores, columns, fractions, values, keep, codes, labels};
    PyObject *copies[8] = {NULL};
    PyObject *results = NULL;
    for (int i = 0; i < 8; i++) {
        copies[i] = given[i] == Py_None ? Py_NewRef(Py_None)
                                        : PyList_GetSlice(given[i], 0, PyList_GET_SIZE(given[i]));
        if (copies[i] == NULL) {
            goto done;
        }
    }
    results = model_results_of(copies[0], copies[1], width, copies[2], copies[3], copies[4],
                               copies[5], copies[6], copies[7], skip, result_type, reason_type);
done:
    for (int i = 0; i < 8; i++) {
        Py_XDECREF(copies[i]);
    }
    return results;
}

static PyObject *model_results_of(PyObject *scores, PyObject *shadow_scores, Py_ssize_t width,
                                  PyObject *columns, PyObject *fractions, PyObject *values,
                                  PyObject *keep, PyObject *codes, PyObject *labels,
                                  PyObject *skip, PyTypeObject *result_type,
                                  PyTypeObject *reason_type) {
    Py_ssize_t count = PyList_GET_SIZE(scores);
    PyObject *results = PyList_New(count);
    if (results == NULL) {
        return NULL;
    }
    for (Py_ssize_t row = 0; row < count; row++) {
        PyObject *index = PyLong_FromSsize_t(row);
        if (index == NULL) {
            goto error;
        }
        int skipped = PySequence_Contains(skip, index);
        Py_DECREF(index);
        if (skipped < 0) {
            goto error;
        }
        if (skipped) {
            Py_INCREF(Py_None);
            PyList_SET_ITEM(results, row, Py_None);
            continue;
        }
        PyObject *items[3];
        items[1] = row_reasons(row * width, width, columns, fractions, values, keep, codes, labels,
                               reason_type);
        if (items[1] == NULL) {
            goto error;
        }
        items[0] = PyList_GET_ITEM(scores, row);
        Py_INCREF(items[0]);
        items[2] = shadow_scores == Py_None ? Py_None : PyList_GET_ITEM(shadow_scores, row);
        Py_INCREF(items[2]);
        PyObject *result = untracked(new_tuple(result_type, items, 3));
        if (result == NULL) {
            goto error;
        }
        PyList_SET_ITEM(results, row, result);
    }
    return results;
error:
    Py_DECREF(results);
    return NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* group_rows: a batch's rows by account, with their event ids' hashes                       */

/* BLAKE2b (RFC 7693) with an 8-byte digest and no key: `state.event_id_hash`'s hash. */
static const uint64_t BLAKE2B_IV[8] = {
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
    0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL,
};

static const uint8_t BLAKE2B_SIGMA[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
};

static uint64_t rotr64(uint64_t x, int n) {
    return (x >> n) | (x << (64 - n));
}

static uint64_t load64_le(const uint8_t *p) {
    uint64_t value = 0;
    for (int i = 7; i >= 0; i--) {
        value = (value << 8) | p[i];
    }
    return value;
}

#define BLAKE2B_G(a, b, c, d, x, y)                                                             \
    do {                                                                                        \
        v[a] = v[a] + v[b] + (x);                                                               \
        v[d] = rotr64(v[d] ^ v[a], 32);                                                         \
        v[c] = v[c] + v[d];                                                                     \
        v[b] = rotr64(v[b] ^ v[c], 24);                                                         \
        v[a] = v[a] + v[b] + (y);                                                               \
        v[d] = rotr64(v[d] ^ v[a], 16);                                                         \
        v[c] = v[c] + v[d];                                                                     \
        v[b] = rotr64(v[b] ^ v[c], 63);                                                         \
    } while (0)

static void blake2b_compress(uint64_t h[8], const uint8_t block[128], uint64_t counter,
                             int last) {
    uint64_t v[16], m[16];
    for (int i = 0; i < 8; i++) {
        v[i] = h[i];
        v[i + 8] = BLAKE2B_IV[i];
    }
    v[12] ^= counter;
    if (last) {
        v[14] = ~v[14];
    }
    for (int i = 0; i < 16; i++) {
        m[i] = load64_le(block + 8 * i);
    }
    for (int round = 0; round < 12; round++) {
        const uint8_t *s = BLAKE2B_SIGMA[round];
        BLAKE2B_G(0, 4, 8, 12, m[s[0]], m[s[1]]);
        BLAKE2B_G(1, 5, 9, 13, m[s[2]], m[s[3]]);
        BLAKE2B_G(2, 6, 10, 14, m[s[4]], m[s[5]]);
        BLAKE2B_G(3, 7, 11, 15, m[s[6]], m[s[7]]);
        BLAKE2B_G(0, 5, 10, 15, m[s[8]], m[s[9]]);
        BLAKE2B_G(1, 6, 11, 12, m[s[10]], m[s[11]]);
        BLAKE2B_G(2, 7, 8, 13, m[s[12]], m[s[13]]);
        BLAKE2B_G(3, 4, 9, 14, m[s[14]], m[s[15]]);
    }
    for (int i = 0; i < 8; i++) {
        h[i] ^= v[i] ^ v[i + 8];
    }
}

/* The digest's 8 bytes read as a little-endian integer. */
static uint64_t blake2b_64(const uint8_t *data, Py_ssize_t size) {
    uint64_t h[8];
    memcpy(h, BLAKE2B_IV, sizeof(h));
    h[0] ^= 0x01010000ULL ^ 8; /* fanout 1, depth 1, no key, 8-byte digest */
    uint64_t counter = 0;
    while (size > 128) {
        counter += 128;
        blake2b_compress(h, data, counter, 0);
        data += 128;
        size -= 128;
    }
    uint8_t block[128] = {0};
    memcpy(block, data, (size_t)size);
    counter += (uint64_t)size;
    blake2b_compress(h, block, counter, 1);
    return h[0];
}

static PyObject *event_id_hash(PyObject *module, PyObject *event_id) {
    Py_ssize_t size;
    const char *text = PyUnicode_AsUTF8AndSize(event_id, &size);
    if (text == NULL) {
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(blake2b_64((const uint8_t *)text, size));
}

/* Rows by (partition, account id), in order of first appearance: one
 * (partition, account_id, row indices, event id hashes) per account. */
static PyObject *group_rows(PyObject *module, PyObject *rows_object) {
    PyObject *rows = PySequence_Fast(rows_object, "rows must be a sequence");
    if (rows == NULL) {
        return NULL;
    }
    PyObject *index_of = PyDict_New(); /* (partition, account id) -> its group */
    PyObject *groups = PyList_New(0);
    if (index_of == NULL || groups == NULL) {
        goto error;
    }
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(rows); i++) {
        PyObject *row = PySequence_Fast_GET_ITEM(rows, i);
        if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) < 4) {
            PyErr_SetString(PyExc_TypeError, "a row must be a TransactionRow");
            goto error;
        }
        PyObject *partition = PyTuple_GET_ITEM(row, 0), *account_id = PyTuple_GET_ITEM(row, 3);
        Py_ssize_t size;
        const char *event_id = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(row, 1), &size);
        if (event_id == NULL) {
            goto error;
        }
        PyObject *key = PyTuple_Pack(2, partition, account_id);
        if (key == NULL) {
            goto error;
        }
        PyObject *group = PyDict_GetItemWithError(index_of, key); /* borrowed */
        if (group == NULL) {
            if (PyErr_Occurred()) {
                Py_DECREF(key);
                goto error;
            }
            PyObject *indices = PyList_New(0), *hashes = PyList_New(0);
            group = indices && hashes ? PyTuple_Pack(4, partition, account_id, indices, hashes)
                                      : NULL;
            Py_XDECREF(indices);
            Py_XDECREF(hashes);
            int stored = group ? PyDict_SetItem(index_of, key, group) : -1;
            int listed = stored == 0 ? PyList_Append(groups, group) : -1;
            Py_XDECREF(group); /* the dict and the list hold it */
            if (listed < 0) {
                Py_DECREF(key);
                goto error;
            }
        }
        Py_DECREF(key);
        PyObject *index = PyLong_FromSsize_t(i);
        PyObject *hash =
            index ? PyLong_FromUnsignedLongLong(blake2b_64((const uint8_t *)event_id, size)) : NULL;
        int appended = index && hash && PyList_Append(PyTuple_GET_ITEM(group, 2), index) == 0 &&
                       PyList_Append(PyTuple_GET_ITEM(group, 3), hash) == 0;
        Py_XDECREF(index);
        Py_XDECREF(hash);
        if (!appended) {
            goto error;
        }
    }
    Py_DECREF(rows);
    Py_DECREF(index_of);
    return groups;
error:
    Py_DECREF(rows);
    Py_XDECREF(index_of);
    Py_XDECREF(groups);
    return NULL;
}


/* ---------------------------------------------------------------------------------------- */
/* Customer features of appended events (`feature_batch._appended_features`)                */

/* An int64 buffer of an array.array("q") or a numpy int64 array. */
static int int64_buffer(PyObject *object, Py_buffer *view, int writable) {
    int flags = PyBUF_FORMAT | PyBUF_ND | PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(object, view, flags) < 0) {
        return 0;
    }
    const char *format = view->format ? view->format : "B";
    if (*format == '<' || *format == '=' || *format == '@') {
        format++;
    }
    if (view->itemsize != 8 || view->ndim != 1 || (strcmp(format, "q") && strcmp(format, "l"))) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_TypeError, "expected a one-dimensional buffer of int64");
        return 0;
    }
    return 1;
}

/* A writable two-dimensional float64 buffer (a numpy array of features). */
static int float64_matrix(PyObject *object, Py_buffer *view) {
    if (PyObject_GetBuffer(object, view,
                           PyBUF_FORMAT | PyBUF_ND | PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0) {
        return 0;
    }
    if (view->ndim != 2 || view->itemsize != 8 || !view->format || strcmp(view->format, "d")) {
        PyErr_SetString(PyExc_TypeError, "values: expected a two-dimensional float64 array");
        PyBuffer_Release(view);
        return 0;
    }
    return 1;
}

/* bisect_right in times[lo, hi): the first position whose time is above `bound`. */
static Py_ssize_t first_above(const int64_t *times, Py_ssize_t lo, Py_ssize_t hi,
                              __int128 bound) {
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if ((__int128)times[mid] > bound) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    return lo;
}

/* A positive 128-bit integer as the nearest double (ties to even), as Python's float(int). */
static double nearest_double(__int128 value) {
    if (value <= (__int128)INT64_MAX) {
        return (double)(int64_t)value;
    }
    unsigned __int128 v = (unsigned __int128)value;
    int shift = 0;
    while ((v >> shift) > (unsigned __int128)UINT64_MAX) {
        shift++;
    }
    uint64_t top = (uint64_t)(v >> shift);
    /* The bits shifted out only decide ties: one sticky bit below the 53 kept keeps them. */
    if (shift && (v & (((unsigned __int128)1 << shift) - 1))) {
        top |= 1;
    }
    /* uint64 to double, rounded once: halve with the lost bit kept sticky, then double. */
    double rounded = (double)(int64_t)((top >> 1) | (top & 1)) * 2.0;
    return ldexp(rounded, shift);
}

#define N_WINDOWS 3
/* Columns of `values`, in this order: TX_AMOUNT, TX_DURING_WEEKEND, TX_DURING_NIGHT, the six
 * customer window columns (count and mean per window), the hour count, the seconds since the
 * previous event, the amount ratio and the z-score. */
#define N_COLUMNS (3 + 2 * N_WINDOWS + 4)

typedef struct {
    Py_ssize_t columns[N_COLUMNS];
    int64_t windows_ms[N_WINDOWS];
    int64_t hour_ms, velocity_ms, history_ms, max_events;
} CustomerSpec;

/* One appended event at `position` of its account: its customer and calendar columns. */
static void customer_row(const CustomerSpec *spec, const int64_t *times, const int64_t *amounts,
                         Py_ssize_t position, double scale, double *out, int64_t *in_velocity) {
    const int64_t time_ms = times[position], amount = amounts[position];
    const Py_ssize_t end = position + 1;
    Py_ssize_t lowest = first_above(times, 0, end, time_ms - spec->history_ms);
    if (end - spec->max_events > lowest) {
        lowest = end - spec->max_events;
    }
    Py_ssize_t start = lowest;
    int64_t sum = 0;
    for (int w = 0; w < N_WINDOWS; w++) {
        start = first_above(times, 0, end, time_ms - spec->windows_ms[w]);
        if (start < lowest) {
            start = lowest;
        }
        int64_t count = end - start;
        sum = 0;
        for (Py_ssize_t i = start; i < end; i++) {
            sum += amounts[i];
        }
        out[spec->columns[3 + 2 * w]] = (double)count;
        out[spec->columns[4 + 2 * w]] = (double)sum / (double)count / scale;
    }
    /* (the windows go from shortest to longest: `start` and `sum` are the longest's) */
    const Py_ssize_t start_longest = start;
    Py_ssize_t hour_start = first_above(times, 0, end, time_ms - spec->hour_ms);
    Py_ssize_t velocity_start = first_above(times, 0, end, time_ms - spec->velocity_ms);
    *in_velocity = end - (velocity_start > lowest ? velocity_start : lowest);
    int64_t longest_ms = spec->windows_ms[N_WINDOWS - 1], since_previous = longest_ms;
    if (position > start_longest && time_ms - times[position - 1] < longest_ms) {
        since_previous = time_ms - times[position - 1];
    }
    /* The amounts before this event in its longest window: m of them, summing to s1 (squares
     * s2), in integers as exact as the final division. */
    int64_t m = position - start_longest, s1 = sum - amount;
    __int128 s2 = 0;
    for (Py_ssize_t i = start_longest; i < position; i++) {
        s2 += (__int128)amounts[i] * amounts[i];
    }
    double ratio = 1.0, zscore = 0.0;
    if (m > 0 && s1 != 0) {
        ratio = (double)(amount * m) / (double)s1;
    }
    if (m >= 2) {
        __int128 spread = (__int128)m * s2 - (__int128)s1 * s1;
        if (spread > 0) {
            zscore = (double)(m * amount - s1) / sqrt(nearest_double(spread));
        }
    }
    int64_t seconds = time_ms / 1000; /* times are positive here */
    out[spec->columns[0]] = (double)amount / scale;
    out[spec->columns[1]] = (seconds / 86400 + 3) % 7 >= 5 ? 1.0 : 0.0;
    out[spec->columns[2]] = (seconds % 86400) / 3600 <= 6 ? 1.0 : 0.0;
    out[spec->columns[3 + 2 * N_WINDOWS]] = (double)(end - (hour_start > lowest ? hour_start : lowest));
    out[spec->columns[4 + 2 * N_WINDOWS]] = (double)since_previous / 1000.0;
    out[spec->columns[5 + 2 * N_WINDOWS]] = ratio;
    out[spec->columns[6 + 2 * N_WINDOWS]] = zscore;
}

static PyObject *str_times_ms, *str_amounts_minor;
static PyObject *str_hashes, *str_last_event_time_ms, *str_amount_bound_minor, *str_frombytes;
static int int64_attribute(PyObject *object, PyObject *name, int64_t *out);

/* customer_columns(accounts, rows, currency_field, scales, values, in_velocity, row_out,
 *                  time_out, columns, windows_ms, hour_ms, velocity_ms, history_ms, max_events)
 * For each account, as `observe_accounts` gives it (its batch rows at `indices`, the last
 * events of `history`), each event's columns into its row of `values` and `in_velocity`; the
 * rows and their times, in account order, into `row_out` and `time_out`. Then the account's
 * `AccountHistory.expire`. Returns how many events. */
static PyObject *customer_columns(PyObject *module, PyObject *args) {
    PyObject *accounts, *rows, *scales, *values_object, *velocity_object, *row_object;
    PyObject *time_object, *columns_object, *windows_object;
    Py_ssize_t currency_field;
    CustomerSpec spec;
    if (!PyArg_ParseTuple(args, "O!O!nO!OOOOO!O!LLLL", &PyList_Type, &accounts, &PyList_Type,
                          &rows, &currency_field, &PyDict_Type, &scales, &values_object,
                          &velocity_object, &row_object, &time_object, &PyTuple_Type,
                          &columns_object, &PyTuple_Type, &windows_object, &spec.hour_ms,
                          &spec.velocity_ms, &spec.history_ms, &spec.max_events)) {
        return NULL;
    }
    if (PyTuple_GET_SIZE(columns_object) != N_COLUMNS ||
        PyTuple_GET_SIZE(windows_object) != N_WINDOWS) {
        PyErr_SetString(PyExc_ValueError, "unexpected number of columns or windows");
        return NULL;
    }
    Py_buffer values = {0}, in_velocity = {0}, row_out = {0}, time_out = {0};
    PyObject *result = NULL;
    if (!float64_matrix(values_object, &values)) {
        return NULL;
    }
    if (!int64_buffer(velocity_object, &in_velocity, 1)) {
        PyBuffer_Release(&values);
        return NULL;
    }
    if (!int64_buffer(row_object, &row_out, 1)) {
        goto release_velocity;
    }
    if (!int64_buffer(time_object, &time_out, 1)) {
        goto release_rows;
    }
    const Py_ssize_t n_rows = values.shape[0], width = values.shape[1];
    if (in_velocity.shape[0] != n_rows || PyList_GET_SIZE(rows) != n_rows) {
        PyErr_SetString(PyExc_ValueError, "values, in_velocity and rows differ in length");
        goto release;
    }
    for (int i = 0; i < N_COLUMNS; i++) {
        spec.columns[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(columns_object, i));
        if (spec.columns[i] < 0 || spec.columns[i] >= width) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_IndexError, "column out of range");
            }
            goto release;
        }
    }
    for (int w = 0; w < N_WINDOWS; w++) {
        spec.windows_ms[w] = PyLong_AsLongLong(PyTuple_GET_ITEM(windows_object, w));
        if (spec.windows_ms[w] == -1 && PyErr_Occurred()) {
            goto release;
        }
    }
    double *out = (double *)values.buf;
    int64_t *velocity = (int64_t *)in_velocity.buf, *row_at = (int64_t *)row_out.buf;
    int64_t *time_at = (int64_t *)time_out.buf;
    Py_ssize_t written = 0;
    for (Py_ssize_t a = 0; a < PyList_GET_SIZE(accounts); a++) {
        PyObject *account = PyList_GET_ITEM(accounts, a);
        if (!PyTuple_Check(account) || PyTuple_GET_SIZE(account) != 5) {
            PyErr_SetString(PyExc_TypeError,
                            "accounts: expected (partition, account_id, history, indices, "
                            "hashes)");
            goto release;
        }
        Py_INCREF(account);
        PyObject *history = PyTuple_GET_ITEM(account, 2);
        PyObject *indices = PyTuple_GET_ITEM(account, 3);
        PyObject *times_object = PyObject_GetAttr(history, str_times_ms);
        PyObject *amounts_object =
            times_object ? PyObject_GetAttr(history, str_amounts_minor) : NULL;
        Py_buffer times = {0}, amounts = {0};
        Py_ssize_t expired = 0;
        int64_t last_ms = 0;
        int ok = amounts_object != NULL && PyList_Check(indices) &&
                 int64_attribute(history, str_last_event_time_ms, &last_ms) == 1 &&
                 int64_buffer(times_object, &times, 0);
        if (ok && !int64_buffer(amounts_object, &amounts, 0)) {
            PyBuffer_Release(&times);
            ok = 0;
        }
        if (ok) {
            Py_ssize_t length = times.shape[0], k = PyList_GET_SIZE(indices);
            if (amounts.shape[0] != length || k > length || written + k > row_out.shape[0] ||
                written + k > time_out.shape[0]) {
                PyErr_SetString(PyExc_ValueError, "an account's arrays do not hold its rows");
                ok = 0;
            }
            for (Py_ssize_t j = 0; ok && j < k; j++) {
                PyObject *row_number = PyList_GET_ITEM(indices, j);
                if (!PyLong_CheckExact(row_number)) {
                    PyErr_SetString(PyExc_TypeError, "an account's rows: expected ints");
                    ok = 0;
                    break;
                }
                Py_ssize_t row = PyLong_AsSsize_t(row_number);
                if (row < 0 || row >= n_rows) {
                    if (!PyErr_Occurred()) {
                        PyErr_SetString(PyExc_IndexError, "row out of range");
                    }
                    ok = 0;
                    break;
                }
                PyObject *row_tuple = PyList_GET_ITEM(rows, row);
                /* Exact types only: no Python code runs in this loop, so the lists and the
                 * borrowed items stay as they are. */
                if (!PyTuple_Check(row_tuple) || currency_field < 0 ||
                    currency_field >= PyTuple_GET_SIZE(row_tuple) ||
                    !PyUnicode_CheckExact(PyTuple_GET_ITEM(row_tuple, currency_field))) {
                    PyErr_SetString(PyExc_TypeError, "rows: expected tuples with a currency");
                    ok = 0;
                    break;
                }
                PyObject *scale_object =
                    PyDict_GetItemWithError(scales, PyTuple_GET_ITEM(row_tuple, currency_field));
                double scale = 100.0;
                if (scale_object != NULL) {
                    if (!PyFloat_CheckExact(scale_object)) {
                        PyErr_SetString(PyExc_TypeError, "scales: expected floats");
                        ok = 0;
                        break;
                    }
                    scale = PyFloat_AS_DOUBLE(scale_object);
                }
                if (PyErr_Occurred()) {
                    ok = 0;
                    break;
                }
                Py_ssize_t position = length - k + j;
                customer_row(&spec, (const int64_t *)times.buf, (const int64_t *)amounts.buf,
                             position, scale, out + row * width, velocity + row);
                row_at[written] = row;
                time_at[written] = ((const int64_t *)times.buf)[position];
                written++;
            }
            /* `AccountHistory.expire`, now that the events' features are computed: the events
             * older than history_ms before the newest, and beyond the max_events newest. */
            expired = first_above((const int64_t *)times.buf, 0, length,
                                  (__int128)last_ms - spec.history_ms);
            expired = length - spec.max_events > expired ? length - spec.max_events : expired;
            PyBuffer_Release(&times);
            PyBuffer_Release(&amounts);
        }
        PyObject *hashes_object = ok && expired > 0 ? PyObject_GetAttr(history, str_hashes) : NULL;
        if (ok && expired > 0) {
            ok = hashes_object != NULL &&
                 PySequence_DelSlice(times_object, 0, expired) == 0 &&
                 PySequence_DelSlice(hashes_object, 0, expired) == 0 &&
                 PySequence_DelSlice(amounts_object, 0, expired) == 0;
        }
        Py_DECREF(account);
        Py_XDECREF(hashes_object);
        Py_XDECREF(times_object);
        Py_XDECREF(amounts_object);
        if (!ok) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_TypeError,
                                "accounts: a history with int64 arrays and last_event_time_ms");
            }
            goto release;
        }
    }
    result = PyLong_FromSsize_t(written);
release:
    PyBuffer_Release(&time_out);
release_rows:
    PyBuffer_Release(&row_out);
release_velocity:
    PyBuffer_Release(&in_velocity);
    PyBuffer_Release(&values);
    return result;
}


/* ---------------------------------------------------------------------------------------- */
/* Appending a batch's events to an account (`feature_batch._appendable`)                    */


/* An int attribute of `object` as int64; 0 (no exception set) when it does not fit. */
static int int64_attribute(PyObject *object, PyObject *name, int64_t *out) {
    PyObject *value = PyObject_GetAttr(object, name);
    if (value == NULL) {
        return -1;
    }
    int overflow = 0;
    long long result = PyLong_AsLongLongAndOverflow(value, &overflow);
    Py_DECREF(value);
    if (result == -1 && PyErr_Occurred()) {
        return -1;
    }
    *out = result;
    return overflow ? 0 : 1;
}

static int set_int64_attribute(PyObject *object, PyObject *name, int64_t value) {
    PyObject *number = PyLong_FromLongLong(value);
    int result = number ? PyObject_SetAttr(object, name, number) : -1;
    Py_XDECREF(number);
    return result;
}

/* The list's item as int64 (unsigned with `is_unsigned`); 0 when it does not fit or is not an
 * int. */
static int list_int64(PyObject *list, Py_ssize_t index, int is_unsigned, uint64_t *out) {
    PyObject *item = PyList_GET_ITEM(list, index);
    if (!PyLong_CheckExact(item)) {
        return 0; /* (an int subclass could run Python code and change the lists) */
    }
    if (is_unsigned) {
        unsigned long long value = PyLong_AsUnsignedLongLong(item);
        if (value == (unsigned long long)-1 && PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_OverflowError)) {
                return -1;
            }
            PyErr_Clear();
            return 0;
        }
        *out = value;
        return 1;
    }
    int overflow = 0;
    long long value = PyLong_AsLongLongAndOverflow(item, &overflow);
    if (value == -1 && PyErr_Occurred()) {
        return -1;
    }
    *out = (uint64_t)value;
    return overflow ? 0 : 1;
}

/* Append `size` 8-byte values to an array.array through its frombytes(). */
static int append_to_array(PyObject *array, const uint64_t *values, Py_ssize_t size) {
    PyObject *bytes = PyBytes_FromStringAndSize((const char *)values, size * 8);
    if (bytes == NULL) {
        return -1;
    }
    PyObject *done = PyObject_CallMethodOneArg(array, str_frombytes, bytes);
    Py_DECREF(bytes);
    Py_XDECREF(done);
    return done ? 0 : -1;
}

typedef struct {
    int64_t longest_ms, max_events, max_amount, max_time_ms;
} AppendLimits;

/* `_appendable`'s question for an account's batch events (at `indices` of the batch's `times`
 * and `amounts`, with their event id `hashes`), and when the answer is yes, their
 * `AccountHistory.append_in_order`, in batch order: 1 when they were appended, 0 when not,
 * -1 with an exception. */
static int append_account(PyObject *history, PyObject *indices, PyObject *hashes, PyObject *times,
                          PyObject *amounts, const AppendLimits *limits) {
    const int64_t longest_ms = limits->longest_ms, max_events = limits->max_events;
    const int64_t max_amount = limits->max_amount, max_time_ms = limits->max_time_ms;
    if (!PyList_CheckExact(indices) || !PyList_CheckExact(hashes) || !PyList_CheckExact(times) ||
        !PyList_CheckExact(amounts)) {
        PyErr_SetString(PyExc_TypeError, "indices, hashes, times and amounts: expected lists");
        return -1;
    }
    const Py_ssize_t k = PyList_GET_SIZE(indices);
    if (k == 0 || PyList_GET_SIZE(hashes) != k) {
        PyErr_SetString(PyExc_ValueError, "expected as many hashes as indices, at least one");
        return -1;
    }
    PyObject *times_array = NULL, *hashes_array = NULL, *amounts_array = NULL;
    Py_buffer seen = {0}, remembered_amounts = {0};
    uint64_t *new_values = NULL;
    int result = -1, appendable = 0;
    times_array = PyObject_GetAttr(history, str_times_ms);
    hashes_array = times_array ? PyObject_GetAttr(history, str_hashes) : NULL;
    amounts_array = hashes_array ? PyObject_GetAttr(history, str_amounts_minor) : NULL;
    if (amounts_array == NULL) {
        goto done;
    }
    int64_t previous, bound;
    int fits = int64_attribute(history, str_last_event_time_ms, &previous);
    if (fits < 0) {
        goto done;
    }
    Py_ssize_t remembered = PyObject_Length(times_array);
    if (remembered < 0) {
        goto done;
    }
    new_values = PyMem_Malloc(3 * k * sizeof(uint64_t));
    if (new_values == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    uint64_t *new_times = new_values, *new_hashes = new_values + k, *new_amounts = new_values + 2 * k;
    if (!fits || remembered + k > max_events) {
        goto answer;
    }
    for (Py_ssize_t j = 0; j < k; j++) {
        PyObject *index_object = PyList_GET_ITEM(indices, j);
        if (!PyLong_CheckExact(index_object)) {
            PyErr_SetString(PyExc_TypeError, "indices: expected ints");
            goto done;
        }
        Py_ssize_t index = PyLong_AsSsize_t(index_object);
        if (index == -1 && PyErr_Occurred()) {
            goto done;
        }
        if (index < 0 || index >= PyList_GET_SIZE(times) || index >= PyList_GET_SIZE(amounts)) {
            PyErr_SetString(PyExc_IndexError, "index out of range");
            goto done;
        }
        int got = list_int64(times, index, 0, &new_times[j]);
        if (got < 0) {
            goto done;
        }
        int64_t time_ms = (int64_t)new_times[j];
        if (!got || time_ms < previous) {
            goto answer;
        }
        got = list_int64(amounts, index, 0, &new_amounts[j]);
        if (got < 0) {
            goto done;
        }
        if (!got || (int64_t)new_amounts[j] < 0 || (int64_t)new_amounts[j] >= max_amount) {
            goto answer;
        }
        previous = time_ms;
    }
    if ((int64_t)new_times[0] < longest_ms || previous >= max_time_ms) {
        goto answer;
    }
    for (Py_ssize_t j = 0; j < k; j++) {
        int got = list_int64(hashes, j, 1, &new_hashes[j]);
        if (got <= 0) {
            if (got < 0) {
                goto done;
            }
            goto answer;
        }
        for (Py_ssize_t i = 0; i < j; i++) {
            if (new_hashes[i] == new_hashes[j]) {
                goto answer;
            }
        }
    }
    if (PyObject_GetBuffer(hashes_array, &seen, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) {
        goto done;
    }
    if (seen.itemsize != 8) {
        PyErr_SetString(PyExc_TypeError, "history.hashes: expected 8-byte items");
        goto done;
    }
    const uint64_t *seen_hashes = (const uint64_t *)seen.buf;
    for (Py_ssize_t i = 0; i < seen.len / 8; i++) {
        for (Py_ssize_t j = 0; j < k; j++) {
            if (seen_hashes[i] == new_hashes[j]) {
                goto answer;
            }
        }
    }
    /* A restored history may hold any int64 amount: the column-wise sums are exact for
     * amounts in [0, max_amount) only. */
    if (!int64_buffer(amounts_array, &remembered_amounts, 0)) {
        goto done;
    }
    const int64_t *held = (const int64_t *)remembered_amounts.buf;
    const Py_ssize_t held_count = remembered_amounts.shape[0];
    for (Py_ssize_t i = 0; i < held_count; i++) {
        if (held[i] < 0) {
            goto answer;
        }
    }
    fits = int64_attribute(history, str_amount_bound_minor, &bound);
    if (fits < 0) {
        goto done;
    }
    if (!fits || bound >= max_amount) {
        /* `largest_amount_minor`: the bound made exact again, whatever the answer. */
        int64_t largest = held_count ? held[0] : 0;
        for (Py_ssize_t i = 1; i < held_count; i++) {
            largest = held[i] > largest ? held[i] : largest;
        }
        bound = largest;
        if (set_int64_attribute(history, str_amount_bound_minor, bound) < 0) {
            goto done;
        }
        if (bound >= max_amount) {
            goto answer;
        }
    }
    /* Appendable: every event appended, as `append_in_order` appends it. */
    PyBuffer_Release(&seen);
    PyBuffer_Release(&remembered_amounts);
    PyObject *arrays[3] = {times_array, hashes_array, amounts_array};
    const uint64_t *appended_values[3] = {new_times, new_hashes, new_amounts};
    Py_ssize_t lengths[3];
    for (int a = 0; a < 3; a++) {
        lengths[a] = PyObject_Length(arrays[a]);
        if (lengths[a] < 0) {
            goto done;
        }
    }
    int failed = 0;
    for (int a = 0; a < 3 && !failed; a++) {
        failed = append_to_array(arrays[a], appended_values[a], k) < 0;
    }
    for (Py_ssize_t j = 0; j < k; j++) {
        bound = (int64_t)new_amounts[j] > bound ? (int64_t)new_amounts[j] : bound;
    }
    int64_t last;
    fits = failed ? 0 : int64_attribute(history, str_last_event_time_ms, &last);
    failed = failed || fits < 0 ||
             (fits && previous > last &&
              set_int64_attribute(history, str_last_event_time_ms, previous) < 0) ||
             set_int64_attribute(history, str_amount_bound_minor, bound) < 0;
    if (failed) {
        /* All or nothing: the arrays go back to what they held (the attributes only ever
         * grow to what the events would have made them). */
        PyObject *type, *value, *traceback;
        PyErr_Fetch(&type, &value, &traceback);
        for (int a = 0; a < 3; a++) {
            if (PySequence_DelSlice(arrays[a], lengths[a], PY_SSIZE_T_MAX) < 0) {
                PyErr_Clear();
            }
        }
        PyErr_Restore(type, value, traceback);
        goto done;
    }
    appendable = 1;
answer:
    result = appendable;
done:
    PyBuffer_Release(&seen);
    PyBuffer_Release(&remembered_amounts);
    PyMem_Free(new_values);
    Py_XDECREF(times_array);
    Py_XDECREF(hashes_array);
    Py_XDECREF(amounts_array);
    return result;
}

/* append_if_appendable(history, indices, hashes, times, amounts, longest_ms, max_events,
 *                      max_amount, max_time_ms): `append_account`, whether appended. */
static PyObject *append_if_appendable(PyObject *module, PyObject *args) {
    PyObject *history, *indices, *hashes, *times, *amounts;
    AppendLimits limits;
    if (!PyArg_ParseTuple(args, "OOOOOLLLL", &history, &indices, &hashes, &times, &amounts,
                          &limits.longest_ms, &limits.max_events, &limits.max_amount,
                          &limits.max_time_ms)) {
        return NULL;
    }
    int appended = append_account(history, indices, hashes, times, amounts, &limits);
    return appended < 0 ? NULL : PyBool_FromLong(appended);
}

static PyObject *str_next_offset;

/* The account's history in its partition's (accounts, changed) pair, created with
 * history_type(account_id) on first sight, and marked changed. New reference. */
static PyObject *changed_history(PyObject *partitions, PyObject *partition, PyObject *account_id,
                                 PyObject *history_type, PyObject *not_restored) {
    PyObject *pair = PyDict_GetItemWithError(partitions, partition);
    if (pair == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetObject(not_restored, partition);
        }
        return NULL;
    }
    if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2 ||
        !PyDict_CheckExact(PyTuple_GET_ITEM(pair, 0)) ||
        !PySet_CheckExact(PyTuple_GET_ITEM(pair, 1))) {
        PyErr_SetString(PyExc_TypeError, "partitions: expected (dict, set) pairs");
        return NULL;
    }
    PyObject *accounts = PyTuple_GET_ITEM(pair, 0), *changed = PyTuple_GET_ITEM(pair, 1);
    Py_INCREF(pair); /* (creating a history runs Python code) */
    PyObject *history = PyDict_GetItemWithError(accounts, account_id);
    if (history != NULL) {
        Py_INCREF(history);
    } else if (!PyErr_Occurred()) {
        history = PyObject_CallOneArg(history_type, account_id);
        if (history != NULL && PyDict_SetItem(accounts, account_id, history) < 0) {
            Py_CLEAR(history);
        }
    }
    if (history != NULL && PySet_Add(changed, account_id) < 0) {
        Py_CLEAR(history);
    }
    Py_DECREF(pair);
    return history;
}

/* Whether the account's first row of the batch lies below the offset its state reflects
 * (`history.next_offset > offset >= 0`): 1 yes, 0 no, -1 with an exception. Anything that does
 * not fit an int64 counts as yes: the event-by-event path then decides. */
static int below_next_offset(PyObject *history, PyObject *row, Py_ssize_t offset_field) {
    if (!PyTuple_Check(row) || offset_field < 0 || offset_field >= PyTuple_GET_SIZE(row)) {
        PyErr_SetString(PyExc_TypeError, "rows: expected tuples with an offset");
        return -1;
    }
    PyObject *offset_object = PyTuple_GET_ITEM(row, offset_field);
    if (!PyLong_CheckExact(offset_object)) {
        return 1;
    }
    int overflow = 0;
    long long offset = PyLong_AsLongLongAndOverflow(offset_object, &overflow);
    if (offset == -1 && PyErr_Occurred()) {
        return -1;
    }
    /* (last: reading an attribute may run Python code, after which `row` is not to be read) */
    int64_t next_offset;
    int fits = int64_attribute(history, str_next_offset, &next_offset);
    if (fits <= 0) {
        return fits < 0 ? -1 : 1;
    }
    return overflow || (next_offset > offset && offset >= 0);
}

/* observe_accounts(rows, partitions, history_type, not_restored, account_type, times, amounts,
 *                  offset_field, columnwise, longest_ms, max_events, max_amount, max_time_ms)
 * The batch's rows by account (as `group_rows` groups them), each account's history found in
 * `partitions` (partition -> (accounts, changed)) or created, and marked changed; a partition
 * not there raises `not_restored(partition)` before any account changes. When `columnwise`, an account none of whose rows
 * lies below its history's next_offset has its events appended when `append_account` can.
 * Returns (appended, others), each a list of account_type(partition, account_id, history,
 * indices, hashes) in order of first appearance. */
static PyObject *observe_accounts(PyObject *module, PyObject *args) {
    PyObject *rows, *partitions, *history_type, *not_restored, *times, *amounts;
    PyTypeObject *account_type;
    Py_ssize_t offset_field;
    int columnwise;
    AppendLimits limits;
    if (!PyArg_ParseTuple(args, "O!O!OOO!O!O!npLLLL", &PyList_Type, &rows, &PyDict_Type,
                          &partitions, &history_type, &not_restored, &PyType_Type, &account_type,
                          &PyList_Type, &times, &PyList_Type, &amounts, &offset_field,
                          &columnwise, &limits.longest_ms, &limits.max_events,
                          &limits.max_amount, &limits.max_time_ms)) {
        return NULL;
    }
    if (!PyType_IsSubtype(account_type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "account_type: expected a named tuple type");
        return NULL;
    }
    PyObject *groups = group_rows(module, rows);
    if (groups == NULL) {
        return NULL;
    }
    PyObject *appended = PyList_New(0), *others = PyList_New(0), *result = NULL;
    if (appended == NULL || others == NULL) {
        goto done;
    }
    /* Every partition first: a batch refused for one leaves every account as it was. */
    for (Py_ssize_t g = 0; g < PyList_GET_SIZE(groups); g++) {
        PyObject *partition = PyTuple_GET_ITEM(PyList_GET_ITEM(groups, g), 0);
        if (PyDict_GetItemWithError(partitions, partition) == NULL) {
            if (!PyErr_Occurred()) {
                PyErr_SetObject(not_restored, partition);
            }
            goto done;
        }
    }
    for (Py_ssize_t g = 0; g < PyList_GET_SIZE(groups); g++) {
        PyObject *group = PyList_GET_ITEM(groups, g);
        PyObject *partition = PyTuple_GET_ITEM(group, 0), *account_id = PyTuple_GET_ITEM(group, 1);
        PyObject *indices = PyTuple_GET_ITEM(group, 2), *hashes = PyTuple_GET_ITEM(group, 3);
        PyObject *history =
            changed_history(partitions, partition, account_id, history_type, not_restored);
        if (history == NULL) {
            goto done;
        }
        int taken = 0;
        if (columnwise) {
            Py_ssize_t first = PyLong_AsSsize_t(PyList_GET_ITEM(indices, 0));
            int below = first < 0 || first >= PyList_GET_SIZE(rows)
                            ? -1
                            : below_next_offset(history, PyList_GET_ITEM(rows, first),
                                                offset_field);
            taken = below < 0 ? -1
                    : below   ? 0
                              : append_account(history, indices, hashes, times, amounts, &limits);
        }
        PyObject *account = NULL;
        if (taken >= 0) {
            PyObject *items[5] = {Py_NewRef(partition), Py_NewRef(account_id), history,
                                  Py_NewRef(indices), Py_NewRef(hashes)};
            account = new_tuple(account_type, items, 5); /* (takes the history's reference) */
        } else {
            Py_DECREF(history);
        }
        if (account == NULL || PyList_Append(taken ? appended : others, account) < 0) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_IndexError, "row out of range");
            }
            Py_XDECREF(account);
            goto done;
        }
        Py_DECREF(account);
    }
    result = PyTuple_Pack(2, appended, others);
done:
    Py_DECREF(groups);
    Py_XDECREF(appended);
    Py_XDECREF(others);
    return result;
}

/* ---------------------------------------------------------------------------------------- */
/* Terminal features (`feature_batch.terminal_columns`)                                      */


static PyObject *str_unread_changes, *str_sorted_view, *str_times, *str_fraud_times;
static PyObject *str_fraud_known;

/* A terminal's sorted int64 arrays (times, fraud_times, fraud_known) as a new tuple: its
 * `_TerminalEntries` attributes, brought up to date by `sorted_view()` first when they are out
 * of date or have changed since the last read (which `sorted_view` also counts). */
static PyObject *terminal_arrays(PyObject *entries) {
    PyObject *unread = PyObject_GetAttr(entries, str_unread_changes);
    PyObject *times = unread ? PyObject_GetAttr(entries, str_times) : NULL;
    if (times == NULL) {
        Py_XDECREF(unread);
        return NULL;
    }
    int overflow = 0;
    int stale = times == Py_None || !PyLong_CheckExact(unread) ||
                PyLong_AsLongAndOverflow(unread, &overflow) != 0 || overflow;
    Py_DECREF(unread);
    if (stale) {
        Py_DECREF(times);
        PyObject *view = PyObject_CallMethodNoArgs(entries, str_sorted_view);
        if (view == NULL) {
            return NULL;
        }
        Py_DECREF(view);
        times = PyObject_GetAttr(entries, str_times);
        if (times == NULL) {
            return NULL;
        }
    }
    PyObject *fraud_times = PyObject_GetAttr(entries, str_fraud_times);
    PyObject *fraud_known = fraud_times ? PyObject_GetAttr(entries, str_fraud_known) : NULL;
    PyObject *arrays = fraud_known ? PyTuple_Pack(3, times, fraud_times, fraud_known) : NULL;
    Py_DECREF(times);
    Py_XDECREF(fraud_times);
    Py_XDECREF(fraud_known);
    return arrays;
}

/* One row's terminal windows into `out` (count, fraud share per window): `features.
   terminal_features` at event time t on one terminal's sorted int64 arrays (times, fraud_times,
   fraud_known), as `TerminalTable.windows` reads them. */
static int terminal_row(PyObject *view, int64_t time_ms, int64_t delay_ms,
                        const int64_t *windows_ms, double *out) {
    Py_buffer buffers[3];
    int held = 0, ok = 0;
    for (; held < 3; held++) {
        if (!int64_buffer(PyTuple_GET_ITEM(view, held), &buffers[held], 0)) {
            goto release;
        }
    }
    const int64_t *times = buffers[0].buf, *fraud_times = buffers[1].buf;
    const int64_t *fraud_known = buffers[2].buf;
    const Py_ssize_t n_frauds = buffers[1].shape[0];
    if (buffers[2].shape[0] != n_frauds) {
        PyErr_SetString(PyExc_ValueError, "terminal table: fraud arrays differ in length");
        goto release;
    }
    const __int128 until = (__int128)time_ms - delay_ms;
    const Py_ssize_t end = first_above(times, 0, buffers[0].shape[0], until);
    const Py_ssize_t fraud_end = first_above(fraud_times, 0, n_frauds, until);
    for (int w = 0; w < N_WINDOWS; w++) {
        const __int128 after = until - windows_ms[w];
        Py_ssize_t count = end - first_above(times, 0, end, after), frauds = 0;
        if (count && fraud_end) {
            for (Py_ssize_t k = first_above(fraud_times, 0, fraud_end, after); k < fraud_end;
                 k++) {
                frauds += fraud_known[k] <= time_ms;
            }
        }
        /* Both exact in a double: one correctly rounded division, as Python's int / int. */
        out[2 * w] = (double)count;
        out[2 * w + 1] = count ? (double)frauds / (double)count : 0.0;
    }
    ok = 1;
release:
    while (held > 0) {
        PyBuffer_Release(&buffers[--held]);
    }
    return ok;
}

/* terminal_columns(terminal_ids, times_ms, terminals, values, rows, columns, windows_ms,
                    delay_ms):
   for each i, the terminal windows of a transaction on terminal_ids[i] at times_ms[i] into
   values[rows[i], columns]; terminals maps a terminal id to its `_TerminalEntries`, and a
   terminal it does not hold (or "") has zeros. */
static PyObject *terminal_columns(PyObject *module, PyObject *args) {
    PyObject *ids, *times_object, *terminals, *values_object, *rows_object, *columns_object;
    PyObject *windows_object;
    long long delay_ms;
    if (!PyArg_ParseTuple(args, "O!OO!OOO!O!L", &PyList_Type, &ids, &times_object, &PyDict_Type,
                          &terminals, &values_object, &rows_object, &PyTuple_Type, &columns_object,
                          &PyTuple_Type, &windows_object, &delay_ms)) {
        return NULL;
    }
    if (PyTuple_GET_SIZE(columns_object) != 2 * N_WINDOWS ||
        PyTuple_GET_SIZE(windows_object) != N_WINDOWS) {
        PyErr_SetString(PyExc_ValueError, "unexpected number of columns or windows");
        return NULL;
    }
    int64_t windows_ms[N_WINDOWS];
    for (int w = 0; w < N_WINDOWS; w++) {
        windows_ms[w] = PyLong_AsLongLong(PyTuple_GET_ITEM(windows_object, w));
        if (windows_ms[w] == -1 && PyErr_Occurred()) {
            return NULL;
        }
    }
    Py_buffer values = {0}, times = {0}, rows = {0};
    PyObject *result = NULL;
    if (!float64_matrix(values_object, &values)) {
        return NULL;
    }
    if (!int64_buffer(times_object, &times, 0)) {
        PyBuffer_Release(&values);
        return NULL;
    }
    if (!int64_buffer(rows_object, &rows, 0)) {
        goto release_times;
    }
    const Py_ssize_t n = PyList_GET_SIZE(ids), height = values.shape[0], width = values.shape[1];
    if (times.shape[0] != n || rows.shape[0] != n) {
        PyErr_SetString(PyExc_ValueError, "terminal_ids, times_ms and rows differ in length");
        goto release;
    }
    Py_ssize_t columns[2 * N_WINDOWS];
    for (int k = 0; k < 2 * N_WINDOWS; k++) {
        columns[k] = PyLong_AsSsize_t(PyTuple_GET_ITEM(columns_object, k));
        if (columns[k] < 0 || columns[k] >= width) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_IndexError, "column out of range");
            }
            goto release;
        }
    }
    const int64_t *time_at = times.buf, *row_at = rows.buf;
    double *out = values.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (row_at[i] < 0 || row_at[i] >= height) {
            PyErr_SetString(PyExc_IndexError, "row out of range");
            goto release;
        }
        if (i >= PyList_GET_SIZE(ids)) { /* (changed by Python code run below) */
            PyErr_SetString(PyExc_RuntimeError, "terminal_ids changed during the call");
            goto release;
        }
        double row[2 * N_WINDOWS] = {0};
        PyObject *terminal_id = PyList_GET_ITEM(ids, i);
        if (!PyUnicode_CheckExact(terminal_id)) {
            PyErr_SetString(PyExc_TypeError, "terminal_ids: expected a list of str");
            goto release;
        }
        PyObject *entries = PyUnicode_GET_LENGTH(terminal_id)
                                ? PyDict_GetItemWithError(terminals, terminal_id)
                                : NULL;
        if (entries == NULL && PyErr_Occurred()) {
            goto release;
        }
        if (entries != NULL) {
            /* (bringing a terminal's arrays up to date runs Python code: the buffers of
             * `values`, `times_ms` and `rows` stay exported meanwhile, so they cannot move) */
            Py_INCREF(entries);
            PyObject *view = terminal_arrays(entries);
            int ok = view != NULL && terminal_row(view, time_at[i], delay_ms, windows_ms, row);
            Py_XDECREF(view);
            Py_DECREF(entries);
            if (!ok) {
                goto release;
            }
        }
        double *target = out + row_at[i] * width;
        for (int k = 0; k < 2 * N_WINDOWS; k++) {
            target[columns[k]] = row[k];
        }
    }
    result = Py_NewRef(Py_None);
release:
    PyBuffer_Release(&rows);
release_times:
    PyBuffer_Release(&times);
    PyBuffer_Release(&values);
    return result;
}

/* ---------------------------------------------------------------------------------------- */

static PyMethodDef methods[] = {
    {"decode_rows", decode_rows, METH_VARARGS,
     "decode_rows(records, fallback, row_type, event_header, schema_header, version_header)"},
    {"encode_decisions", encode_decisions, METH_VARARGS,
     "encode_decisions(rows, results, outcomes, decision_ids, versions_and_time, "
     "shadow_version, topic, record_type, event_header, schema_headers)"},
    {"model_results", model_results, METH_VARARGS,
     "model_results(scores, shadow_scores, width, columns, fractions, values, keep, codes, "
     "labels, "
     "skip, result_type, reason_type)"},
    {"event_id_hash", event_id_hash, METH_O, "event_id_hash(event_id): state.event_id_hash"},
    {"customer_columns", customer_columns, METH_VARARGS,
     "customer_columns(accounts, rows, currency_field, scales, values, in_velocity, row_out, "
     "time_out, columns, windows_ms, hour_ms, velocity_ms, history_ms, max_events)"},
    {"append_if_appendable", append_if_appendable, METH_VARARGS,
     "append_if_appendable(history, indices, hashes, times, amounts, longest_ms, max_events, "
     "max_amount, max_time_ms)"},
    {"terminal_columns", terminal_columns, METH_VARARGS,
     "terminal_columns(terminal_ids, times_ms, terminals, values, rows, columns, windows_ms, "
     "delay_ms)"},
    {"observe_accounts", observe_accounts, METH_VARARGS,
     "observe_accounts(rows, partitions, history_type, not_restored, account_type, times, "
     "amounts, offset_field, columnwise, longest_ms, max_events, max_amount, max_time_ms)"},
    {"group_rows", group_rows, METH_O,
     "group_rows(rows): (partition, account_id, row indices, event id hashes) per account"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "txguard.fraud._per_record",
    "The detector's per-record work in C (see _per_record.c).", -1, methods,
};

PyMODINIT_FUNC PyInit__per_record(void) {
    const uint16_t one = 1;
    if (*(const uint8_t *)&one != 1) {
        PyErr_SetString(PyExc_ImportError,
                        "txguard.fraud._per_record needs a little-endian machine");
        return NULL;
    }
    str_headers = PyUnicode_InternFromString("headers");
    str_value = PyUnicode_InternFromString("value");
    str_partition = PyUnicode_InternFromString("partition");
    str_offset = PyUnicode_InternFromString("offset");
    str_times_ms = PyUnicode_InternFromString("times_ms");
    str_amounts_minor = PyUnicode_InternFromString("amounts_minor");
    str_hashes = PyUnicode_InternFromString("hashes");
    str_last_event_time_ms = PyUnicode_InternFromString("last_event_time_ms");
    str_amount_bound_minor = PyUnicode_InternFromString("amount_bound_minor");
    str_frombytes = PyUnicode_InternFromString("frombytes");
    str_next_offset = PyUnicode_InternFromString("next_offset");
    str_unread_changes = PyUnicode_InternFromString("_unread_changes");
    str_sorted_view = PyUnicode_InternFromString("sorted_view");
    str_times = PyUnicode_InternFromString("times");
    str_fraud_times = PyUnicode_InternFromString("fraud_times");
    str_fraud_known = PyUnicode_InternFromString("fraud_known");
    if (!str_unread_changes || !str_sorted_view || !str_times || !str_fraud_times ||
        !str_fraud_known || !str_next_offset || !str_hashes || !str_last_event_time_ms || !str_amount_bound_minor ||
        !str_frombytes || !str_headers || !str_value || !str_partition || !str_offset ||
        !str_times_ms || !str_amounts_minor) {
        return NULL;
    }
    return PyModule_Create(&module);
}
