/* FR3 kinematics, the control laws and the safety filter (see laws.h). */
#define _GNU_SOURCE
#include <math.h>
#include <string.h>

#include "laws.h"

/* FR3 kinematics, modified (Craig) Denavit-Hartenberg parameters per joint:
 * a_{i-1}, d_i, alpha_{i-1}; then the flange (d = 0.107). */
static const double DH_A[8] = {0.0, 0.0, 0.0, 0.0825, -0.0825, 0.0, 0.088, 0.0};
static const double DH_D[8] = {0.333, 0.0, 0.316, 0.0, 0.384, 0.0, 0.0, 0.107};
static const double DH_ALPHA[8] = {0.0, -M_PI_2, M_PI_2, M_PI_2, -M_PI_2, M_PI_2, M_PI_2, 0.0};

void mat4_mul_cm(const double *a, const double *b, double *out) {
    double tmp[16];
    for (int c = 0; c < 4; c++)
        for (int r = 0; r < 4; r++) {
            double s = 0.0;
            for (int k = 0; k < 4; k++) s += a[k * 4 + r] * b[c * 4 + k];
            tmp[c * 4 + r] = s;
        }
    memcpy(out, tmp, sizeof tmp);
}

void fr3_frames(const double *q, double p[7][3], double z[7][3], double *flange) {
    double t[16] = {1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1}; /* col-major identity */
    for (int i = 0; i < 8; i++) {
        double theta = i < 7 ? q[i] : 0.0;
        double ct = cos(theta), st = sin(theta);
        double ca = cos(DH_ALPHA[i]), sa = sin(DH_ALPHA[i]);
        double a = DH_A[i], d = DH_D[i];
        /* RotX(alpha) TransX(a) RotZ(theta) TransZ(d), col-major */
        double m[16] = {ct, st * ca, st * sa, 0.0,
                        -st, ct * ca, ct * sa, 0.0,
                        0.0, -sa, ca, 0.0,
                        a, -sa * d, ca * d, 1.0};
        mat4_mul_cm(t, m, t);
        if (i < 7) {
            p[i][0] = t[12]; p[i][1] = t[13]; p[i][2] = t[14];
            z[i][0] = t[8]; z[i][1] = t[9]; z[i][2] = t[10];
        }
    }
    memcpy(flange, t, 16 * sizeof(double));
}

void fr3_jacobian(const double *q, const double *point, double *jac) {
    double p[7][3], z[7][3], flange[16];
    fr3_frames(q, p, z, flange);
    for (int j = 0; j < 7; j++) {
        double rx = point[0] - p[j][0], ry = point[1] - p[j][1], rz = point[2] - p[j][2];
        double *col = jac + 6 * j;
        col[0] = z[j][1] * rz - z[j][2] * ry;
        col[1] = z[j][2] * rx - z[j][0] * rz;
        col[2] = z[j][0] * ry - z[j][1] * rx;
        col[3] = z[j][0];
        col[4] = z[j][1];
        col[5] = z[j][2];
    }
}

/* Solve the symmetric positive definite 6x6 system A x = b in place (Cholesky). */
static int chol_solve6(double A[6][6], double *b) {
    double L[6][6] = {{0}};
    for (int i = 0; i < 6; i++) {
        for (int j = 0; j <= i; j++) {
            double s = A[i][j];
            for (int k = 0; k < j; k++) s -= L[i][k] * L[j][k];
            if (i == j) {
                if (s <= 0.0) return -1;
                L[i][i] = sqrt(s);
            } else {
                L[i][j] = s / L[j][j];
            }
        }
    }
    for (int i = 0; i < 6; i++) { /* L y = b */
        double s = b[i];
        for (int k = 0; k < i; k++) s -= L[i][k] * b[k];
        b[i] = s / L[i][i];
    }
    for (int i = 5; i >= 0; i--) { /* L^T x = y */
        double s = b[i];
        for (int k = i + 1; k < 6; k++) s -= L[k][i] * b[k];
        b[i] = s / L[i][i];
    }
    return 0;
}

void law_impedance(const double *q, const double *dq, const double *q_desired, const double *dq_desired,
                   const double *kp, const double *kd, double *tau) {
    for (int i = 0; i < 7; i++) tau[i] = kp[i] * (q_desired[i] - q[i]) + kd[i] * (dq_desired[i] - dq[i]);
}

void law_osc(const double *q, const double *dq, const double *T, const double *Td, const double *kp,
             const double *kd, const double *qn, const double *nkp, const double *nkd, const osc_params *p,
             double *J, double *tau) {
    fr3_jacobian(q, T + 12, J);

    double e[6];
    e[0] = Td[3] - T[12];
    e[1] = Td[7] - T[13];
    e[2] = Td[11] - T[14];
    /* S = Rd R^T; e_rot = vee(skew(S)) = sin(angle) axis. R(r,c) = T[c*4+r], Rd(r,c) = Td[r*4+c]. */
    double S[3][3];
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 3; c++) {
            double s = 0.0;
            for (int k = 0; k < 3; k++) s += Td[r * 4 + k] * T[k * 4 + c];
            S[r][c] = s;
        }
    e[3] = 0.5 * (S[2][1] - S[1][2]);
    e[4] = 0.5 * (S[0][2] - S[2][0]);
    e[5] = 0.5 * (S[1][0] - S[0][1]);
    double n = sqrt(e[0] * e[0] + e[1] * e[1] + e[2] * e[2]);
    if (n > p->max_translation) for (int i = 0; i < 3; i++) e[i] *= p->max_translation / n;
    n = sqrt(e[3] * e[3] + e[4] * e[4] + e[5] * e[5]);
    if (n > p->max_rotation) for (int i = 3; i < 6; i++) e[i] *= p->max_rotation / n;

    double f[6];
    for (int r = 0; r < 6; r++) {
        double v6 = 0.0;
        for (int c = 0; c < 7; c++) v6 += J[c * 6 + r] * dq[c];
        f[r] = kp[r] * e[r] - kd[r] * v6;
    }
    double tn[7], y[6];
    for (int c = 0; c < 7; c++) {
        double s = 0.0;
        for (int r = 0; r < 6; r++) s += J[c * 6 + r] * f[r];
        tau[c] = s;
        tn[c] = nkp[c] * (qn[c] - q[c]) - nkd[c] * dq[c];
    }
    /* Null space: tau += tn - J^T (J J^T + lambda I)^-1 J tn */
    double A[6][6];
    for (int r = 0; r < 6; r++) {
        double s = 0.0;
        for (int c = 0; c < 7; c++) s += J[c * 6 + r] * tn[c];
        y[r] = s;
        for (int k = 0; k <= r; k++) {
            double a = 0.0;
            for (int c = 0; c < 7; c++) a += J[c * 6 + r] * J[c * 6 + k];
            A[r][k] = A[k][r] = a;
        }
        A[r][r] += p->null_damping;
    }
    if (chol_solve6(A, y) < 0) {
        for (int c = 0; c < 7; c++) tau[c] = NAN; /* caught by the safety filter */
        return;
    }
    for (int c = 0; c < 7; c++) {
        double s = 0.0;
        for (int r = 0; r < 6; r++) s += J[c * 6 + r] * y[r];
        tau[c] += tn[c] - s;
    }
}

int law_safety(double *tau, double scale, const double *q, const double *dq, const double *last,
               const safety_params *s, double *cmd) {
    const double *qmin = s->q_min, *qmax = s->q_max, *dmax = s->dtau_max, *tmax = s->tau_max;
    int finite = 1;
    for (int i = 0; i < 7; i++) {
        double t = tau[i] * scale;
        double depth = s->margin - (q[i] - qmin[i]);
        if (depth > 0.0) {
            t += s->stiffness * depth - (dq[i] < 0.0 ? s->damping * dq[i] : 0.0);
        } else {
            depth = s->margin - (qmax[i] - q[i]);
            if (depth > 0.0) t -= s->stiffness * depth + (dq[i] > 0.0 ? s->damping * dq[i] : 0.0);
        }
        tau[i] = t;
        if (!isfinite(t)) finite = 0;
    }
    for (int i = 0; i < 7; i++) {
        double c;
        if (finite) {
            double d = tau[i] - last[i];
            if (d > dmax[i]) d = dmax[i];
            else if (d < -dmax[i]) d = -dmax[i];
            c = last[i] + d;
            if (c > tmax[i]) c = tmax[i];
            else if (c < -tmax[i]) c = -tmax[i];
        } else { /* one rate-limited step towards zero */
            double d = last[i];
            if (d > dmax[i]) d = dmax[i];
            else if (d < -dmax[i]) d = -dmax[i];
            c = last[i] - d;
        }
        cmd[i] = c;
    }
    return finite;
}
