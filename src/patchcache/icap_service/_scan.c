/* Optional native scanner for the ICAP core's head parsing (patchcache.icap_service.protocol).
 *
 * Theory of operation
 * -------------------
 * The Python twins are the reference (_readers.py, _encapsulated.py, _headers.py): they
 * validate and split heads with regular expressions and Python code, and they are what runs
 * when this module is not built. _native.py is the only module that imports this one. The
 * functions here do the same work for the common, valid case in one pass over the bytes and
 * return the same values; for anything they do not accept (malformed input, limits exceeded,
 * repeated fields that the twins report) they return None and the twin parses the bytes
 * itself, so every error message and status comes from one place. A hypothesis test holds
 * the two to the same results on arbitrary input.
 *
 *   icap_fields(block, max_preview, max_fields)
 *       block: the ICAP header fields, each "name:value CRLF" (RFC 3507 section 4.3.2).
 *       -> (block as latin-1 text, Encapsulated value or None, Preview or None,
 *           allow 204, allow 206, keep-alive)
 *   encapsulated(value, method)
 *       value: the Encapsulated field value as text (section 4.4.1), for method REQMOD,
 *       RESPMOD or OPTIONS. -> (req-hdr or None, res-hdr or None, body entry name in lower
 *       case, body offset) when the entries are allowed for the method, in order, and start
 *       at 0 with increasing offsets.
 *   fields(block)
 *       block: a field block these functions accepted, as text. -> (((name, value), ...),
 *       {lower-case name: first value}), what _headers.Headers builds on first look-up.
 *   http_request_head(raw, max_fields)  -> (method, target, version, field block)
 *   http_response_head(raw, max_fields) -> (version, status, reason, field block)
 *       raw: one encapsulated HTTP head ending with CRLF CRLF (RFC 9112 section 2.1).
 *
 *   build(cls, slots, *values)
 *       A new instance of the slotted class cls with each slot descriptor of `slots` set to
 *       the value at the same position: what a frozen dataclass's __init__ does with one
 *       object.__setattr__ call per field, in one call (_native.maker). It writes through the
 *       descriptors' own __set__ (tp_descr_set), which checks that the slot belongs to cls
 *       and is writable: no layout of CPython's descriptor objects is read here.
 *
 * Only bytes objects are accepted, read in place; every index is checked against the length
 * before the byte is read. No state is kept between calls.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static unsigned char TOKEN[256]; /* RFC 9110 tchar */

static void
init_token_table(void)
{
    const char *extra = "!#$%&'*+-.^_`|~";
    int c;
    for (c = '0'; c <= '9'; c++) TOKEN[c] = 1;
    for (c = 'a'; c <= 'z'; c++) TOKEN[c] = 1;
    for (c = 'A'; c <= 'Z'; c++) TOKEN[c] = 1;
    for (; *extra; extra++) TOKEN[(unsigned char)*extra] = 1;
}

/* One header field "token:value CRLF" starting at p[i]. On success sets the name end (the
 * colon), the value span and returns the index after the CRLF; returns -1 if malformed. */
static Py_ssize_t
scan_field(const unsigned char *p, Py_ssize_t n, Py_ssize_t i, Py_ssize_t *colon,
           Py_ssize_t *value_end)
{
    Py_ssize_t start = i;
    while (i < n && TOKEN[p[i]]) i++;
    if (i == start || i >= n || p[i] != ':') return -1;
    *colon = i;
    i++;
    while (i < n && p[i] != '\r' && p[i] != '\n') i++;
    if (i + 1 >= n || p[i] != '\r' || p[i + 1] != '\n') return -1;
    *value_end = i;
    return i + 2;
}

static int
name_is(const unsigned char *p, Py_ssize_t start, Py_ssize_t stop, const char *lower)
{
    Py_ssize_t len = (Py_ssize_t)strlen(lower), k;
    if (stop - start != len) return 0;
    for (k = 0; k < len; k++) {
        unsigned char c = p[start + k];
        if (c >= 'A' && c <= 'Z') c = (unsigned char)(c + 32);
        if (c != (unsigned char)lower[k]) return 0;
    }
    return 1;
}

/* bytes.strip() without arguments: ASCII whitespace (no CR/LF can occur inside a value). */
static int
is_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == 0x0b || c == 0x0c;
}

/* Does the comma-separated list p[a:b] hold `want` (compared after strip, optionally folded
 * to lower case)? */
static int
list_has(const unsigned char *p, Py_ssize_t a, Py_ssize_t b, const char *want, int fold)
{
    Py_ssize_t len = (Py_ssize_t)strlen(want);
    while (1) {
        Py_ssize_t stop = a, s, e, k;
        while (stop < b && p[stop] != ',') stop++;
        s = a;
        e = stop;
        while (s < e && is_space(p[s])) s++;
        while (e > s && is_space(p[e - 1])) e--;
        if (e - s == len) {
            for (k = 0; k < len; k++) {
                unsigned char c = p[s + k];
                if (fold && c >= 'A' && c <= 'Z') c = (unsigned char)(c + 32);
                if (c != (unsigned char)want[k]) break;
            }
            if (k == len) return 1;
        }
        if (stop >= b) return 0;
        a = stop + 1;
    }
}

static int
parse_args(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want, const char *name,
           const unsigned char **data, Py_ssize_t *size, Py_ssize_t *ints)
{
    Py_ssize_t k;
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "%s expects %zd arguments", name, want);
        return -1;
    }
    if (!PyBytes_Check(args[0])) {
        PyErr_Format(PyExc_TypeError, "%s expects bytes", name);
        return -1;
    }
    *data = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    *size = PyBytes_GET_SIZE(args[0]);
    for (k = 1; k < want; k++) {
        ints[k - 1] = PyLong_AsSsize_t(args[k]);
        if (ints[k - 1] == -1 && PyErr_Occurred()) return -1;
    }
    return 0;
}

/* Is this str stored one byte per character (latin-1 range), so it can be read in place? */
static int
one_byte_text(PyObject *text)
{
#if PY_VERSION_HEX < 0x030C0000
    /* Strings made by legacy C APIs may not be "ready" (canonical form) yet before 3.12. */
    if (PyUnicode_READY(text) < 0) return 0;
#endif
    return PyUnicode_KIND(text) == PyUnicode_1BYTE_KIND;
}

static PyObject *
latin1(const unsigned char *p, Py_ssize_t start, Py_ssize_t stop)
{
    return PyUnicode_DecodeLatin1((const char *)p + start, stop - start, NULL);
}

/* Strip spaces and tabs around p[*a:*b]. */
static void
strip_blank(const unsigned char *p, Py_ssize_t *a, Py_ssize_t *b)
{
    while (*a < *b && (p[*a] == ' ' || p[*a] == '\t')) (*a)++;
    while (*b > *a && (p[*b - 1] == ' ' || p[*b - 1] == '\t')) (*b)--;
}

static PyObject *
icap_fields(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    const unsigned char *p;
    Py_ssize_t n, ints[2], i = 0, fields = 0;
    Py_ssize_t enc_a = -1, enc_b = -1, enc_count = 0;
    long long preview = -1;
    int allow_204 = 0, allow_206 = 0, keep_alive = 1;
    PyObject *text, *enc, *prev, *result;
    (void)self;

    if (parse_args(args, nargs, 3, "icap_fields", &p, &n, ints) < 0) return NULL;
    while (i < n) {
        Py_ssize_t colon, value_end, next, a, b;
        next = scan_field(p, n, i, &colon, &value_end);
        if (next < 0) Py_RETURN_NONE;
        if (++fields > ints[1]) Py_RETURN_NONE;
        a = colon + 1;
        b = value_end;
        strip_blank(p, &a, &b);
        if (name_is(p, i, colon, "encapsulated")) {
            if (++enc_count > 1) Py_RETURN_NONE;
            enc_a = a;
            enc_b = b;
        }
        else if (name_is(p, i, colon, "preview")) {
            Py_ssize_t k;
            long long value = 0;
            if (b == a || b - a > 9) Py_RETURN_NONE;
            for (k = a; k < b; k++) {
                if (p[k] < '0' || p[k] > '9') Py_RETURN_NONE;
                value = value * 10 + (p[k] - '0');
            }
            if (value > (long long)ints[0]) Py_RETURN_NONE;
            preview = value;
        }
        else if (name_is(p, i, colon, "allow")) {
            allow_204 = allow_204 || list_has(p, a, b, "204", 0);
            allow_206 = allow_206 || list_has(p, a, b, "206", 0);
        }
        else if (name_is(p, i, colon, "connection")) {
            if (list_has(p, a, b, "close", 1)) keep_alive = 0;
        }
        i = next;
    }
    text = latin1(p, 0, n);
    if (text == NULL) return NULL;
    if (enc_count) {
        enc = latin1(p, enc_a, enc_b);
        if (enc == NULL) {
            Py_DECREF(text);
            return NULL;
        }
    }
    else {
        enc = Py_NewRef(Py_None);
    }
    if (preview >= 0) {
        prev = PyLong_FromLongLong(preview);
        if (prev == NULL) {
            Py_DECREF(text);
            Py_DECREF(enc);
            return NULL;
        }
    }
    else {
        prev = Py_NewRef(Py_None);
    }
    result = Py_BuildValue("(NNNOOO)", text, enc, prev, allow_204 ? Py_True : Py_False,
                           allow_206 ? Py_True : Py_False, keep_alive ? Py_True : Py_False);
    return result;
}

/* Header fields from p[i] to the final empty line, which must end the buffer. Returns the
 * index where the final CRLF starts, or -1. */
static Py_ssize_t
scan_fields_to_end(const unsigned char *p, Py_ssize_t n, Py_ssize_t i, Py_ssize_t max_fields)
{
    Py_ssize_t fields = 0;
    while (1) {
        Py_ssize_t colon, value_end;
        if (n - i == 2 && p[i] == '\r' && p[i + 1] == '\n') return i;
        i = scan_field(p, n, i, &colon, &value_end);
        if (i < 0) return -1;
        if (++fields > max_fields) return -1;
    }
}

static PyObject *
http_request_head(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    const unsigned char *p;
    Py_ssize_t n, ints[1], i = 0, method_end, target_start, target_end, version_start;
    Py_ssize_t line_end, block_end;
    (void)self;

    if (parse_args(args, nargs, 2, "http_request_head", &p, &n, ints) < 0) return NULL;
    while (i < n && TOKEN[p[i]]) i++;
    if (i == 0 || i >= n || p[i] != ' ') Py_RETURN_NONE;
    method_end = i++;
    target_start = i;
    while (i < n && p[i] != ' ' && p[i] != '\r' && p[i] != '\n') i++;
    if (i == target_start || i >= n || p[i] != ' ') Py_RETURN_NONE;
    target_end = i++;
    version_start = i;
    if (n - i < 5 || memcmp(p + i, "HTTP/", 5) != 0) Py_RETURN_NONE;
    i += 5;
    while (i < n && p[i] != ' ' && p[i] != '\r' && p[i] != '\n') i++;
    if (i + 1 >= n || p[i] != '\r' || p[i + 1] != '\n') Py_RETURN_NONE;
    line_end = i;
    block_end = scan_fields_to_end(p, n, line_end + 2, ints[0]);
    if (block_end < 0) Py_RETURN_NONE;
    return Py_BuildValue("(NNNN)", latin1(p, 0, method_end), latin1(p, target_start, target_end),
                         latin1(p, version_start, line_end), latin1(p, line_end + 2, block_end));
}

static PyObject *
http_response_head(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    const unsigned char *p;
    Py_ssize_t n, ints[1], i, version_end, reason_start, reason_end, block_end;
    long status;
    (void)self;

    if (parse_args(args, nargs, 2, "http_response_head", &p, &n, ints) < 0) return NULL;
    if (n < 5 || memcmp(p, "HTTP/", 5) != 0) Py_RETURN_NONE;
    i = 5;
    while (i < n && p[i] != ' ' && p[i] != '\r' && p[i] != '\n') i++;
    if (i >= n || p[i] != ' ') Py_RETURN_NONE;
    version_end = i++;
    if (n - i < 3) Py_RETURN_NONE;
    if (p[i] < '0' || p[i] > '9' || p[i + 1] < '0' || p[i + 1] > '9' || p[i + 2] < '0' ||
        p[i + 2] > '9')
        Py_RETURN_NONE;
    status = (p[i] - '0') * 100 + (p[i + 1] - '0') * 10 + (p[i + 2] - '0');
    i += 3;
    if (i < n && p[i] == ' ') {
        reason_start = ++i;
        while (i < n && p[i] != '\r' && p[i] != '\n') i++;
        reason_end = i;
    }
    else {
        reason_start = reason_end = i;
    }
    if (i + 1 >= n || p[i] != '\r' || p[i + 1] != '\n') Py_RETURN_NONE;
    block_end = scan_fields_to_end(p, n, i + 2, ints[0]);
    if (block_end < 0) Py_RETURN_NONE;
    return Py_BuildValue("(NlNN)", latin1(p, 0, version_end), status,
                         latin1(p, reason_start, reason_end), latin1(p, i + 2, block_end));
}

/* One "name=digits" entry of an Encapsulated value at v[*i]: the name index in ENTRY_NAMES
 * (case-insensitive) and the offset; -1 if malformed. Moves *i past the entry. */
static const char *ENTRY_NAMES[] = {"req-hdr", "res-hdr", "req-body", "res-body", "null-body",
                                    "opt-body"};
enum { REQ_HDR, RES_HDR, REQ_BODY, RES_BODY, NULL_BODY, OPT_BODY, N_ENTRIES };

static int
scan_entry(const unsigned char *v, Py_ssize_t n, Py_ssize_t *i, long *offset)
{
    Py_ssize_t start = *i, eq, k;
    int which;
    eq = start;
    while (eq < n && v[eq] != '=') eq++;
    if (eq >= n) return -1;
    for (which = 0; which < N_ENTRIES; which++)
        if (name_is(v, start, eq, ENTRY_NAMES[which])) break;
    if (which == N_ENTRIES) return -1;
    k = eq + 1;
    *offset = 0;
    while (k < n && v[k] >= '0' && v[k] <= '9') {
        if (k - eq > 9) return -1;
        *offset = *offset * 10 + (v[k] - '0');
        k++;
    }
    if (k == eq + 1) return -1;
    *i = k;
    return which;
}

static PyObject *
encapsulated(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    const unsigned char *v;
    Py_ssize_t n, i = 0;
    long offsets[N_ENTRIES], last = -1, offset;
    int seen[N_ENTRIES] = {0}, previous = -1, which, may_req, may_res, own_body;
    const char *method;
    PyObject *req, *res;
    (void)self;

    if (nargs != 2 || !PyUnicode_Check(args[0]) || !PyUnicode_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "encapsulated expects (value: str, method: str)");
        return NULL;
    }
    if (!one_byte_text(args[0])) return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    v = PyUnicode_1BYTE_DATA(args[0]);
    n = PyUnicode_GET_LENGTH(args[0]);
    method = PyUnicode_AsUTF8(args[1]);
    if (method == NULL) return NULL;
    /* Section 4.4.1: which heads each method may carry, and its body entry besides null-body. */
    if (strcmp(method, "RESPMOD") == 0) {
        may_req = may_res = 1;
        own_body = RES_BODY;
    }
    else if (strcmp(method, "REQMOD") == 0) {
        may_req = 1;
        may_res = 0;
        own_body = REQ_BODY;
    }
    else if (strcmp(method, "OPTIONS") == 0) {
        may_req = may_res = 0;
        own_body = OPT_BODY;
    }
    else {
        Py_RETURN_NONE;
    }
    while (i < n && (v[i] == ' ' || v[i] == '\t')) i++;
    while (1) {
        which = scan_entry(v, n, &i, &offset);
        /* Header entries first, in order; the body entry ends the list (checked below). */
        if (which < 0 || which <= previous) Py_RETURN_NONE;
        if (last < 0 ? offset != 0 : offset <= last) Py_RETURN_NONE;
        seen[which] = 1;
        offsets[which] = offset;
        previous = which;
        last = offset;
        while (i < n && (v[i] == ' ' || v[i] == '\t')) i++;
        if (i >= n) break;
        if (v[i] != ',' || which >= REQ_BODY) Py_RETURN_NONE;
        i++;
        while (i < n && (v[i] == ' ' || v[i] == '\t')) i++;
    }
    if (previous < REQ_BODY) Py_RETURN_NONE;
    if ((seen[REQ_HDR] && !may_req) || (seen[RES_HDR] && !may_res)) Py_RETURN_NONE;
    if (previous != NULL_BODY && previous != own_body) Py_RETURN_NONE;
    req = seen[REQ_HDR] ? PyLong_FromLong(offsets[REQ_HDR]) : Py_NewRef(Py_None);
    res = seen[RES_HDR] ? PyLong_FromLong(offsets[RES_HDR]) : Py_NewRef(Py_None);
    return Py_BuildValue("(NNsl)", req, res, ENTRY_NAMES[previous], offsets[previous]);
}

static PyObject *
fields(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    const unsigned char *p;
    Py_ssize_t n, i = 0, count = 0, k;
    PyObject *items = NULL, *index = NULL, *result;
    (void)self;

    if (nargs != 1 || !PyUnicode_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "fields expects (block: str)");
        return NULL;
    }
    if (!one_byte_text(args[0])) return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    p = PyUnicode_1BYTE_DATA(args[0]);
    n = PyUnicode_GET_LENGTH(args[0]);
    /* First pass: validate and count, so the tuple is allocated once. */
    while (i < n) {
        Py_ssize_t colon, value_end;
        i = scan_field(p, n, i, &colon, &value_end);
        if (i < 0) Py_RETURN_NONE;
        count++;
    }
    items = PyTuple_New(count);
    index = PyDict_New();
    if (items == NULL || index == NULL) goto fail;
    for (i = 0, k = 0; k < count; k++) {
        Py_ssize_t colon, value_end, a, b, c;
        PyObject *name, *value, *pair, *lower;
        unsigned char lowered[256];
        c = i; /* the name starts the line */
        i = scan_field(p, n, i, &colon, &value_end);
        a = colon + 1;
        b = value_end;
        strip_blank(p, &a, &b);
        name = latin1(p, c, colon);
        value = latin1(p, a, b);
        if (name == NULL || value == NULL) {
            Py_XDECREF(name);
            Py_XDECREF(value);
            goto fail;
        }
        pair = PyTuple_Pack(2, name, value);
        if (pair == NULL) {
            Py_DECREF(name);
            Py_DECREF(value);
            goto fail;
        }
        PyTuple_SET_ITEM(items, k, pair);
        if (colon - c <= (Py_ssize_t)sizeof(lowered)) {
            Py_ssize_t j;
            for (j = c; j < colon; j++) {
                unsigned char ch = p[j];
                lowered[j - c] = (ch >= 'A' && ch <= 'Z') ? (unsigned char)(ch + 32) : ch;
            }
            lower = PyUnicode_DecodeLatin1((const char *)lowered, colon - c, NULL);
        }
        else {
            lower = PyObject_CallMethod(name, "lower", NULL);
        }
        Py_DECREF(name);
        if (lower == NULL) {
            Py_DECREF(value);
            goto fail;
        }
        if (PyDict_SetDefault(index, lower, value) == NULL) {
            Py_DECREF(lower);
            Py_DECREF(value);
            goto fail;
        }
        Py_DECREF(lower);
        Py_DECREF(value);
    }
    result = PyTuple_Pack(2, items, index);
    Py_DECREF(items);
    Py_DECREF(index);
    return result;
fail:
    Py_XDECREF(items);
    Py_XDECREF(index);
    return NULL;
}

static PyObject *
build(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyTypeObject *cls;
    PyObject *slots, *obj;
    Py_ssize_t count, k;
    (void)self;

    if (nargs < 2 || !PyType_Check(args[0]) || !PyTuple_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "build expects (cls, slots: tuple, *values)");
        return NULL;
    }
    cls = (PyTypeObject *)args[0];
    slots = args[1];
    count = PyTuple_GET_SIZE(slots);
    if (nargs - 2 != count) {
        PyErr_Format(PyExc_TypeError, "build: %zd values for %zd slots", nargs - 2, count);
        return NULL;
    }
    /* Only a class written in Python on object, as object.__new__ would make it: its
     * instances start with every slot empty, which its deallocator expects. */
    if (!PyType_HasFeature(cls, Py_TPFLAGS_HEAPTYPE) ||
        cls->tp_new != PyBaseObject_Type.tp_new) {
        PyErr_SetString(PyExc_TypeError, "build: not a Python class made by object.__new__");
        return NULL;
    }
    for (k = 0; k < count; k++) {
        if (!Py_IS_TYPE(PyTuple_GET_ITEM(slots, k), &PyMemberDescr_Type)) {
            PyErr_SetString(PyExc_TypeError, "build: not a slot descriptor");
            return NULL;
        }
    }
    obj = cls->tp_alloc(cls, 0);
    if (obj == NULL) return NULL;
    for (k = 0; k < count; k++) {
        /* A slot of another class raises TypeError here, a read-only one AttributeError. */
        if (PyMemberDescr_Type.tp_descr_set(PyTuple_GET_ITEM(slots, k), obj, args[k + 2]) < 0) {
            Py_DECREF(obj);
            return NULL;
        }
    }
    return obj;
}

static PyMethodDef methods[] = {
    {"icap_fields", (PyCFunction)(void (*)(void))icap_fields, METH_FASTCALL,
     "icap_fields(block, max_preview, max_fields) -> tuple or None"},
    {"encapsulated", (PyCFunction)(void (*)(void))encapsulated, METH_FASTCALL,
     "encapsulated(value, method) -> (req_hdr, res_hdr, body, body_offset) or None"},
    {"build", (PyCFunction)(void (*)(void))build, METH_FASTCALL,
     "build(cls, slots, *values) -> a new cls instance with those slots set"},
    {"fields", (PyCFunction)(void (*)(void))fields, METH_FASTCALL,
     "fields(block) -> (((name, value), ...), {lower-case name: first value}) or None"},
    {"http_request_head", (PyCFunction)(void (*)(void))http_request_head, METH_FASTCALL,
     "http_request_head(raw, max_fields) -> (method, target, version, fields) or None"},
    {"http_response_head", (PyCFunction)(void (*)(void))http_response_head, METH_FASTCALL,
     "http_response_head(raw, max_fields) -> (version, status, reason, fields) or None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_scan", "Native scanner for the ICAP core (see protocol.py).", -1,
    methods,
};

PyMODINIT_FUNC
PyInit__scan(void)
{
    init_token_table();
    return PyModule_Create(&module);
}
