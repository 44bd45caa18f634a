/*
 * The control laws and the safety filter as pure functions of plain double
 * arrays: no Python, no Kernel. The loop's cycle (cycle.c) and the rescue
 * thread (rescue.c) call the same functions; aiofranka/control.py is their
 * numpy reference and the tests check one against the other.
 *
 * Storage follows libfranka: poses and the Jacobian are column-major (pose
 * element (r, c) at [c*4 + r], Jacobian (r, c) at [c*6 + r]); targets handed
 * in from numpy (ee_desired) are row-major 4x4.
 */
#ifndef AIOFRANKA_LAWS_H
#define AIOFRANKA_LAWS_H

/* OSC error caps and the null-space projection's damping. */
typedef struct {
    double max_translation; /* m */
    double max_rotation;    /* rad */
    double null_damping;
} osc_params;

/* What the safety filter enforces: the joint-limit guard band and the torque
 * rate and saturation limits (arrays of 7). */
typedef struct {
    const double *q_min, *q_max; /* rad */
    const double *tau_max;       /* N m */
    const double *dtau_max;      /* N m per cycle */
    double margin;               /* guard band (rad) */
    double stiffness, damping;   /* guard (N m/rad, N m s/rad) */
} safety_params;

/* out(4x4, col-major) = a(col-major) * b(col-major); out may alias a or b. */
void mat4_mul_cm(const double *a, const double *b, double *out);

/* FR3 forward kinematics: origin p[i] and z axis z[i] of joint i (0..6) and
 * the flange transform (col-major). */
void fr3_frames(const double *q, double p[7][3], double z[7][3], double *flange);

/* Zero Jacobian (col-major 6x7) of the base-frame point `point`. */
void fr3_jacobian(const double *q, const double *point, double *jac);

/* Joint impedance: tau = kp (q_desired - q) + kd (dq_desired - dq). */
void law_impedance(const double *q, const double *dq, const double *q_desired, const double *dq_desired,
                   const double *kp, const double *kd, double *tau);

/* Operational-space control with a null-space joint impedance. `ee` is the
 * current pose (col-major), `ee_desired` the target (row-major). Writes the
 * Jacobian at the pose into `jac` and the torque into `tau` (NaN when the
 * null-space system is singular: the safety filter catches it). */
void law_osc(const double *q, const double *dq, const double *ee, const double *ee_desired, const double *kp,
             const double *kd, const double *q_null, const double *null_kp, const double *null_kd,
             const osc_params *p, double *jac, double *tau);

/* tau *= scale, plus the joint-limit guard (tau is updated in place); then
 * rate-limit against tau_last and saturate into cmd. Returns 1 if tau was
 * finite, 0 if not (cmd is then one rate-limited step towards zero). */
int law_safety(double *tau, double scale, const double *q, const double *dq, const double *tau_last,
               const safety_params *s, double *cmd);

#endif
