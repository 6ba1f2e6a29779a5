/* The latent-space work of edgehema's classifier in one pass per event, the GIL released.
 *
 * numpy does the same work (edgehema/model/clustering.py, the reference and the fallback) as a dozen
 * whole-array operations, each reading and writing 150,000-row temporaries: about 25 ms of a
 * sample's 85 ms. Here every event's few latent numbers stay in registers. Sums and exponentials
 * are in double, from the float32 latents the graph gives, so the results agree with numpy's
 * float32 arithmetic to about 1e-6 (tests/test_assign_kernels.py): an event changes class only
 * where two classes tie to that precision.
 *
 * Arrays come in through the buffer protocol (C-contiguous; the caller checks shapes and types),
 * so the module needs no numpy headers to build.
 *
 *   assign(n, z1, z2, d1, d2, centroids, k1, alpha, inv_var, means, const, k2, layout, p, labels)
 *       every event's five class probabilities and its class (the first largest, as argmax)
 *   nearest_sums(n, z, d, centroids, k, counts, sums)
 *       per centroid: the events nearest it, and their latent sums (hard assignment)
 *   gmm_sums(n, z, d, weight, inv_var, means, const, k, nk, rz)
 *       per component: sum of weight x responsibility, and of that times the latent point
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>

#define MAX_K 16
#define MAX_D 64
#define N_CLASSES 5

typedef struct {
    Py_buffer views[16];
    int n;
} Views;

static void release(Views *v)
{
    for (int i = 0; i < v->n; i++)
        PyBuffer_Release(&v->views[i]);
    v->n = 0;
}

/* A C-contiguous view of obj holding at least `count` items of `itemsize` bytes; NULL on error. */
static void *view(Views *v, PyObject *obj, Py_ssize_t count, Py_ssize_t itemsize, int writable, const char *what)
{
    Py_buffer *b = &v->views[v->n];
    if (PyObject_GetBuffer(obj, b, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return NULL;
    v->n++;
    if (b->itemsize != itemsize || b->len < count * itemsize) {
        PyErr_Format(PyExc_ValueError, "%s: needs %zd items of %zd bytes", what, count, itemsize);
        return NULL;
    }
    return b->buf;
}

/* A buffer a kernel needs: at least `count` items of `itemsize` bytes. */
typedef struct {
    PyObject *obj;
    Py_ssize_t count, itemsize;
    int writable;
    const char *what;
} Want;

/* Views of every wanted buffer, in order, into bufs; 0 (all released, the exception set) on error. */
static int view_all(Views *v, const Want *want, int n, void **bufs)
{
    for (int i = 0; i < n; i++) {
        bufs[i] = view(v, want[i].obj, want[i].count, want[i].itemsize, want[i].writable, want[i].what);
        if (bufs[i] == NULL) {
            release(v);
            return 0;
        }
    }
    return 1;
}

/* Student's t kernel q_j = (1 + |z - c_j|^2 / alpha)^(-(alpha + 1) / 2), normalised over j. */
static inline void student_t(const float *z, int d, const double *c, int k, double alpha, double *q)
{
    double total = 0.0;
    for (int j = 0; j < k; j++) {
        double s = 0.0;
        for (int i = 0; i < d; i++) {
            double e = (double)z[i] - c[j * d + i];
            s += e * e;
        }
        q[j] = alpha == 1.0 ? 1.0 / (1.0 + s) : pow(1.0 + s / alpha, -0.5 * (alpha + 1.0));
        total += q[j];
    }
    double scale = 1.0 / total;
    for (int j = 0; j < k; j++)
        q[j] *= scale;
}

/* Posterior of the components of a diagonal Gaussian mixture; cst_j = sum log(2 pi var) - 2 log w_j. */
static inline void responsibilities(const float *z, int d, const double *inv, const double *mu, const double *cst,
                                    int k, double *g)
{
    double top = -HUGE_VAL;
    for (int j = 0; j < k; j++) {
        double s = 0.0;
        for (int i = 0; i < d; i++) {
            double e = (double)z[i] - mu[j * d + i];
            s += e * e * inv[j * d + i];
        }
        g[j] = -0.5 * (s + cst[j]);
        if (g[j] > top)
            top = g[j];
    }
    double total = 0.0;
    for (int j = 0; j < k; j++) {
        g[j] = exp(g[j] - top);
        total += g[j];
    }
    double scale = 1.0 / total;
    for (int j = 0; j < k; j++)
        g[j] *= scale;
}

static int check_dims(Py_ssize_t d1, Py_ssize_t k1, Py_ssize_t d2, Py_ssize_t k2)
{
    if (d1 < 1 || d1 > MAX_D || d2 < 1 || d2 > MAX_D || k1 < 1 || k1 > MAX_K || k2 < 1 || k2 > MAX_K) {
        PyErr_SetString(PyExc_ValueError, "latent sizes or cluster counts outside the kernels' limits");
        return 0;
    }
    return 1;
}

static inline __attribute__((always_inline)) void assign_rows(
    Py_ssize_t n, const float *z1, const float *z2, int d1, int d2, const double *c, int k1, double alpha,
    const double *inv, const double *mu, const double *cst, int k2, const unsigned char *lay, float *p,
    unsigned char *labels)
{
    double q[MAX_K], g[MAX_K];
    for (Py_ssize_t e = 0; e < n; e++) {
        student_t(z1 + e * d1, d1, c, k1, alpha, q);
        responsibilities(z2 + e * d2, d2, inv, mu, cst, k2, g);
        float *row = p + e * N_CLASSES;
        double side = q[lay[2]];
        row[lay[6]] = (float)q[lay[0]];
        row[lay[7]] = (float)q[lay[1]];
        row[lay[8]] = (float)(side * g[lay[3]]);
        row[lay[9]] = (float)(side * g[lay[4]]);
        row[lay[10]] = (float)(side * g[lay[5]]);
        int best = 0;
        for (int j = 1; j < N_CLASSES; j++)
            if (row[j] > row[best])
                best = j;
        labels[e] = (unsigned char)best;
    }
}

/* layout: 11 bytes. [0..2] stage-1 clusters of noise, plt, the red-cell side; [3..5] stage-2
 * components of rbc, retic, coincidence; [6..10] the output columns of noise, plt, rbc, retic,
 * coincidence. */
static PyObject *fastassign_assign(PyObject *self, PyObject *args)
{
    PyObject *oz1, *oz2, *oc, *oinv, *omu, *ocst, *op, *olab;
    Py_ssize_t n, d1, d2, k1, k2;
    double alpha;
    const unsigned char *lay;
    Py_ssize_t lay_len;
    if (!PyArg_ParseTuple(args, "nOOnnOndOOOny#OO", &n, &oz1, &oz2, &d1, &d2, &oc, &k1, &alpha, &oinv, &omu, &ocst,
                          &k2, &lay, &lay_len, &op, &olab))
        return NULL;
    if (!check_dims(d1, k1, d2, k2))
        return NULL;
    if (n < 0 || lay_len != 11 || alpha <= 0) {
        PyErr_SetString(PyExc_ValueError, "assign: bad event count, layout or alpha");
        return NULL;
    }
    for (int i = 0; i < 11; i++) {
        int limit = i < 3 ? (int)k1 : i < 6 ? (int)k2 : N_CLASSES;
        if (lay[i] >= limit) {
            PyErr_SetString(PyExc_ValueError, "assign: layout index out of range");
            return NULL;
        }
    }
    Views v = {.n = 0};
    void *b[8];
    const Want want[8] = {{oz1, n * d1, 4, 0, "z1"}, {oz2, n * d2, 4, 0, "z2"}, {oc, k1 * d1, 8, 0, "centroids"},
                          {oinv, k2 * d2, 8, 0, "inv_var"}, {omu, k2 * d2, 8, 0, "means"}, {ocst, k2, 8, 0, "const"},
                          {op, n * N_CLASSES, 4, 1, "probabilities"}, {olab, n, 1, 1, "labels"}};
    if (!view_all(&v, want, 8, b))
        return NULL;
    const float *z1 = b[0], *z2 = b[1];
    const double *c = b[2], *inv = b[3], *mu = b[4], *cst = b[5];
    float *p = b[6];
    unsigned char *labels = b[7];
    Py_BEGIN_ALLOW_THREADS
    /* The shipped models' shape (4-unit latents, 3 clusters per stage) with constant sizes, so the
     * compiler unrolls the small loops: twice as fast as the general loop. */
    if (d1 == 4 && k1 == 3 && d2 == 4 && k2 == 3 && alpha == 1.0)
        assign_rows(n, z1, z2, 4, 4, c, 3, 1.0, inv, mu, cst, 3, lay, p, labels);
    else
        assign_rows(n, z1, z2, (int)d1, (int)d2, c, (int)k1, alpha, inv, mu, cst, (int)k2, lay, p, labels);
    Py_END_ALLOW_THREADS
    release(&v);
    Py_RETURN_NONE;
}

static PyObject *fastassign_nearest_sums(PyObject *self, PyObject *args)
{
    PyObject *oz, *oc, *ocount, *osum;
    Py_ssize_t n, d, k;
    if (!PyArg_ParseTuple(args, "nOnOnOO", &n, &oz, &d, &oc, &k, &ocount, &osum))
        return NULL;
    if (!check_dims(d, k, 1, 1) || n < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "nearest_sums: bad event count");
        return NULL;
    }
    Views v = {.n = 0};
    void *b[4];
    const Want want[4] = {{oz, n * d, 4, 0, "z"}, {oc, k * d, 8, 0, "centroids"}, {ocount, k, 8, 1, "counts"},
                          {osum, k * d, 8, 1, "sums"}};
    if (!view_all(&v, want, 4, b))
        return NULL;
    const float *z = b[0];
    const double *c = b[1];
    double *count = b[2], *sum = b[3];
    Py_BEGIN_ALLOW_THREADS
    memset(count, 0, (size_t)k * sizeof(double));
    memset(sum, 0, (size_t)(k * d) * sizeof(double));
    for (Py_ssize_t e = 0; e < n; e++) {
        const float *ze = z + e * d;
        /* The largest Student's t weight is the nearest centroid (the first, on a tie, as argmax). */
        int best = 0;
        double best_s = HUGE_VAL;
        for (int j = 0; j < k; j++) {
            double s = 0.0;
            for (int i = 0; i < d; i++) {
                double x = (double)ze[i] - c[j * d + i];
                s += x * x;
            }
            if (s < best_s) {
                best_s = s;
                best = j;
            }
        }
        count[best] += 1.0;
        for (int i = 0; i < d; i++)
            sum[best * d + i] += ze[i];
    }
    Py_END_ALLOW_THREADS
    release(&v);
    Py_RETURN_NONE;
}

static inline __attribute__((always_inline)) void gmm_rows(
    Py_ssize_t n, const float *z, int d, const float *w, const double *inv, const double *mu, const double *cst,
    int k, double *nk, double *rz)
{
    double g[MAX_K];
    for (Py_ssize_t e = 0; e < n; e++) {
        const float *ze = z + e * d;
        responsibilities(ze, d, inv, mu, cst, k, g);
        for (int j = 0; j < k; j++) {
            double r = g[j] * (double)w[e];
            nk[j] += r;
            for (int i = 0; i < d; i++)
                rz[j * d + i] += r * ze[i];
        }
    }
}

static PyObject *fastassign_gmm_sums(PyObject *self, PyObject *args)
{
    PyObject *oz, *ow, *oinv, *omu, *ocst, *onk, *orz;
    Py_ssize_t n, d, k;
    if (!PyArg_ParseTuple(args, "nOnOOOOnOO", &n, &oz, &d, &ow, &oinv, &omu, &ocst, &k, &onk, &orz))
        return NULL;
    if (!check_dims(1, 1, d, k) || n < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "gmm_sums: bad event count");
        return NULL;
    }
    Views v = {.n = 0};
    void *b[7];
    const Want want[7] = {{oz, n * d, 4, 0, "z"}, {ow, n, 4, 0, "weight"}, {oinv, k * d, 8, 0, "inv_var"},
                          {omu, k * d, 8, 0, "means"}, {ocst, k, 8, 0, "const"}, {onk, k, 8, 1, "nk"},
                          {orz, k * d, 8, 1, "rz"}};
    if (!view_all(&v, want, 7, b))
        return NULL;
    const float *z = b[0], *w = b[1];
    const double *inv = b[2], *mu = b[3], *cst = b[4];
    double *nk = b[5], *rz = b[6];
    Py_BEGIN_ALLOW_THREADS
    memset(nk, 0, (size_t)k * sizeof(double));
    memset(rz, 0, (size_t)(k * d) * sizeof(double));
    if (d == 4 && k == 3)  /* the shipped models' shape, unrolled */
        gmm_rows(n, z, 4, w, inv, mu, cst, 3, nk, rz);
    else
        gmm_rows(n, z, (int)d, w, inv, mu, cst, (int)k, nk, rz);
    Py_END_ALLOW_THREADS
    release(&v);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"assign", fastassign_assign, METH_VARARGS,
     "assign(n, z1, z2, d1, d2, centroids, k1, alpha, inv_var, means, const, k2, layout, p, labels)"},
    {"nearest_sums", fastassign_nearest_sums, METH_VARARGS, "nearest_sums(n, z, d, centroids, k, counts, sums)"},
    {"gmm_sums", fastassign_gmm_sums, METH_VARARGS, "gmm_sums(n, z, d, weight, inv_var, means, const, k, nk, rz)"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastassign",
                                    "edgehema's latent-space assignment kernels (optional, compiled)", -1, methods};

/* The limits are exported (MAX_LATENT, MAX_CLUSTERS) so that Python sends larger models to numpy
 * from the one definition here. */
PyMODINIT_FUNC PyInit__fastassign(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "MAX_LATENT", MAX_D) < 0 || PyModule_AddIntConstant(m, "MAX_CLUSTERS", MAX_K) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
