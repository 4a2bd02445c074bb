"""The scripted expert of ``Pusher-v5``: resolved-rate control of the hand from Jacobians.

``Pusher-v5`` (gymnasium, MuJoCo): a 7-joint arm (torques in [-2, 2], ``dt`` = 5 x 0.01 s)
must push a cylinder (radius 0.05) to a fixed goal on a table. The observation (23 floats)
is ``qpos[:7], qvel[:7]``, then the positions of the hand (``tips_arm``: the centre of the
hand's cross bar), the object and the goal. The hand is a U: a bar and two prongs 0.1 long,
0.2 apart, in the hand's x-y plane; the object fits between the prongs.

The expert acts from the observation alone (no hidden state): it rebuilds the arm's
kinematics in its own copy of the environment's MuJoCo model (``mj_kinematics``,
``mj_jacBody``), and

1. picks a push heading: from the object to the goal, turned toward the radial direction
   (from the shoulder) by at most 1.2 rad, so that the hand can reach behind the object;
2. if the object is not cradled in the U (in the hand frame: 0.02 < x < 0.13, |y| < 0.09,
   hand low), moves the hand to 0.065 behind the object along that heading, above the
   object (z = -0.19), then lowers it to table height (z = -0.275) around the object;
3. once cradled, moves the hand by the object's error to the goal at 0.03 m/s (the object
   of Pusher-v5 is so light that contact moves it only this fast; a faster hand passes
   through it);

with the hand's x axis along the heading and its z axis vertical. The hand's velocity
(position and orientation, damped least squares, joints at their limits removed) is
turned into joint velocities, and those into torques through the arm's mass matrix
(``tau = M (qd* - qd) / 0.2 + damping qd*``).

Example:
    >>> obs = np.zeros(23); obs[14:17] = [0.821, -0.6, 0.0]
    >>> obs[17:20] = [0.3, -0.3, -0.275]; obs[20:23] = [0.45, -0.05, -0.323]
    >>> a = pusher_expert(obs[None])
    >>> a.shape, bool(np.abs(a).max() <= 2.0)
    ((1, 7), True)
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

SHOULDER = np.array([0.1, -0.6])  # the shoulder lift joint, seen from above
LOW, LIFT = -0.275, -0.19  # hand heights: around the object, above it
OFFSET = 0.065  # the object's centre sits this far in front of the hand's bar when cradled
MAX_TURN = 1.2  # rad: most the push heading turns from the goal direction toward radial
APPROACH_SPEED, PUSH_SPEED = 0.6, 0.03  # m/s
KP, KR, W_ROT, DAMP, TAU = 6.0, 3.0, 0.3, 1e-3, 0.2


@functools.lru_cache(maxsize=1)
def _model() -> tuple[Any, Any, int]:
    """The expert's own copy of Pusher-v5's MuJoCo model (same XML as the environment)."""
    import gymnasium.envs.mujoco as gym_mujoco
    import mujoco

    path = Path(gym_mujoco.__file__).parent / "assets" / "pusher_v5.xml"
    model = mujoco.MjModel.from_xml_path(str(path))
    return model, mujoco.MjData(model), model.body("tips_arm").id


def _pinv(j: np.ndarray, damp: float) -> np.ndarray:
    return j.T @ np.linalg.inv(j @ j.T + damp * np.eye(len(j)))


def _heading(obj: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """Unit push heading: goal direction, turned toward radial by at most ``MAX_TURN``."""
    g = goal - obj
    to_goal = np.arctan2(g[1], g[0])
    radial = np.arctan2(obj[1] - SHOULDER[1], obj[0])
    turn = (to_goal - radial + np.pi) % (2 * np.pi) - np.pi
    yaw = radial + np.clip(turn, -MAX_TURN, MAX_TURN)
    return np.array([np.cos(yaw), np.sin(yaw)])


def pusher_phase(obs: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """Hand target (3,), heading (2,) and phase (``push``, ``lower``, ``approach``) of one
    observation, plus the kinematics left in the expert's model."""
    import mujoco

    model, data, hand = _model()
    data.qpos[:] = 0
    data.qpos[:7] = obs[:7]
    mujoco.mj_kinematics(model, data)
    p, rot = data.xpos[hand], data.xmat[hand].reshape(3, 3)
    obj, goal = obs[17:20], obs[20:23]
    u = _heading(obj[:2], goal[:2])
    local = rot.T @ (obj - p)  # the object in the hand frame
    if 0.02 < local[0] < 0.13 and abs(local[1]) < 0.09 and p[2] < LOW + 0.03:
        return np.array([*(p[:2] + goal[:2] - obj[:2]), LOW]), u, "push"
    behind = obj[:2] - OFFSET * u
    if np.linalg.norm(p[:2] - behind) < 0.015:
        return np.array([*behind, LOW]), u, "lower"
    return np.array([*behind, LIFT]), u, "approach"


def pusher_expert(obs: np.ndarray) -> np.ndarray:
    """Scripted expert for ``Pusher-v5`` on a batch of observations (B, 23) -> torques (B, 7)."""
    import mujoco

    obs = np.atleast_2d(np.asarray(obs, dtype=np.float64))
    model, data, hand = _model()
    lo, hi = model.jnt_range[:7, 0], model.jnt_range[:7, 1]
    jp, jr = np.zeros((3, model.nv)), np.zeros((3, model.nv))
    mass = np.zeros((model.nv, model.nv))
    out = np.zeros((len(obs), 7))
    for i, o in enumerate(obs):
        target, u, phase = pusher_phase(o)
        mujoco.mj_comPos(model, data)
        mujoco.mj_jacBody(model, data, jp, jr, hand)
        p, rot = data.xpos[hand], data.xmat[hand].reshape(3, 3)
        err = target - p
        speed = PUSH_SPEED if phase == "push" else APPROACH_SPEED
        if np.linalg.norm(err) > speed / KP:
            err *= speed / KP / np.linalg.norm(err)
        e_rot = np.cross(rot[:, 0], [u[0], u[1], 0.0]) + np.cross(rot[:, 2], [0.0, 0.0, 1.0])
        jac = np.vstack([jp[:, :7], W_ROT * jr[:, :7]])
        e = np.concatenate([KP * err, W_ROT * KR * e_rot])
        pan = np.arctan2(target[1] - SHOULDER[1], target[0])
        rest = np.array([pan, 0.5, 0.0, -1.2, 0.0, -0.4, 0.0]) - o[:7]
        free = np.ones(7, bool)
        for _ in range(3):  # joints that would cross their limits are taken out
            jf = jac * free
            ji = _pinv(jf, DAMP)
            qd = ji @ e + (np.eye(7) - ji @ jf) @ (0.5 * rest * free)
            nxt = o[:7] + 0.1 * qd
            hit = free & (((nxt < lo) & (qd < 0)) | ((nxt > hi) & (qd > 0)))
            if not hit.any():
                break
            free &= ~hit
        qd = qd * free
        mujoco.mj_crb(model, data)
        mujoco.mj_fullM(model, data, mass)
        tau = mass[:7, :7] @ (qd - o[7:14]) / TAU + model.dof_damping[:7] * qd
        out[i] = np.clip(tau, -2.0, 2.0)
    return out


def pusher_distance(env: Any) -> float:
    """Object-goal distance in the table plane (x, y) of a ``Pusher-v5`` environment, read
    from the simulator (the 3-D distance of the reward adds the constant 0.048 height
    difference between the object's and the goal's centres)."""
    u = env.unwrapped
    return float(np.linalg.norm((u.get_body_com("object") - u.get_body_com("goal"))[:2]))


__all__ = ["pusher_expert", "pusher_distance", "pusher_phase"]
