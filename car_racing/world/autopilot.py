"""A scripted expert driver for CarRacing-v3 that reads the env's internal state.

:class:`AutopilotDriver` follows the :class:`car_racing.episodes.rollout.Driver` protocol. It never looks at the
pixels: it reads ``env.unwrapped.track`` (the centre-line waypoints ``(alpha, beta, x, y)``, one every
3.5 units, in driving order) and ``env.unwrapped.car`` (hull position, angle, velocity; wheels).

Control law
-----------
- **Steering: pure pursuit** on the centre line. The driver tracks the car's nearest waypoint
  (searched within ±8 waypoints of the previous one, so a track that passes close to itself never makes
  it jump ahead and skip tiles), picks the point ``6 + 0.18·speed`` units further along the centre line
  (plus the car's distance from the centre beyond 4 units, so that after a mistake it rejoins the road
  at a shallow angle) and steers the front wheels onto the arc through that point:
  ``δ = atan(2·wheelbase·x / d²)``, ``x`` the point's lateral offset in car coordinates, ``d`` its
  distance. Two small terms make it robust to steering noise: a cross-track term (0.03 rad per unit
  off the centre line) and yaw-rate damping (0.15 rad per rad/s between the arc's yaw rate and the
  car's). A point behind the car (after a spin) means full lock towards it.
- **Speed profile** (computed once per episode, at :meth:`reset`): the centre line's curvature ``κ``
  (averaged over ±2 waypoints) gives a cornering speed ``sqrt(a_lat / κ)`` with ``a_lat`` = 210
  units/s² (laps still all finish up to ~240; 280 misses tiles), capped at the car's top speed; a
  backward pass around the closed loop limits it so the car can brake (``a_brake`` = 140 units/s²) in
  time for every bend. Gas / brake track that target (brake ≤ 0.8, so the wheels never lock).
- **Traction control**: gas is reduced while the rear wheels spin more than 8 units/s faster than the
  ground speed, and while cornering hard (friction circle: ``gas ≤ 1.5·(1 - (v·|yaw rate| / a_lat)²)``),
  which stops the rear-wheel-drive car from spinning out of bends.
- **Grass**: with a wheel off the road (60% grip) the target speed drops to 25 units/s (gentle braking,
  ≤ 0.3, so the tyres keep their lateral grip) and to 20 when also pointing away from the road ahead.
- **Start and finish**: the car starts at ``track[0]`` (tile 0 is visited at reset) and the lap
  finishes only when every tile has been touched, so it drives the loop in order from waypoint 0.

Noise for data diversity
------------------------
``noise`` is the maximum level (0 = clean and deterministic). At each :meth:`reset`, a RNG seeded by
the episode seed draws this episode's levels (stored in :attr:`episode_info`, JSON-serialisable floats):

- ``steer_sigma`` ~ U(0, 0.3·noise): stationary std of an Ornstein–Uhlenbeck process added to the
  steering command (correlation time 0.4 s = 20 steps: ``n_t = ρ·n_{t-1} + σ·sqrt(1-ρ²)·ε``,
  ``ρ = exp(-1/20)``).
- ``burst_prob`` ~ U(0, 0.01·noise): per-step probability of starting a random-action burst of 5–19
  steps, during which one random action (steer U(-1, 1), gas U(0, 1), brake U(0, 1)·(U(0,1) < 0.3))
  replaces the autopilot's. After it, pure pursuit steers back onto the track: the recorded data
  contains mistakes and recoveries.

``holds`` (default 0: off) adds longer mistakes, drawn from an RNG of their own (so ``holds`` 0 leaves every other
draw as it was): on average ``holds`` times per 1000 steps, once the car has driven 50 steps, the driver lets go
and holds one action for 40–100 steps (0.8–2 s) — straight on with gas U(0.3, 1), a steering angle U(−1, 1) with
gas U(0.3, 1), or coasting — then pure pursuit brings the car back. Bursts of 5–19 steps rarely take the car off
the road at speed; a hold through a bend does, so M sees what missing a corner costs (a C that drives straight
on is what CMA-ES tries first, and a dream that has never seen it leave the road pays it as if it turned).

The same seed and ``noise`` give the same actions (the env itself is deterministic per seed too).
Measured (``bench/bench_autopilot.py``, seeds 0–19, 1000-step limit): see docs/stages.md.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

WHEELBASE = 3.24  # units, front to rear axle
TOP_SPEED = 100.0  # Box2D's speed cap, units/s
NOISE_SEED_SALT = 0x5EED_A070  # decorrelates the noise RNG from the env's own track RNG
HOLD_SEED_SALT = 0x401D_5EED  # the holds' own RNG: holds 0 leaves the noise stream as it was
HOLD_STEPS = (40, 101)  # a hold's length in steps, [low, high)
HOLD_AFTER = 50  # no hold before the car has driven this many steps (it must be moving to miss a corner)


class AutopilotDriver:
    """Pure-pursuit + speed-profile expert for CarRacing-v3, with optional per-episode noise.

    ``noise`` (≥ 0) is the maximum noise level; the levels actually used are drawn per episode (see the
    module docstring) and exposed as :attr:`episode_info` ``{"steer_sigma": float, "burst_prob": float}``.
    Picklable: only plain attributes (the per-episode state is rebuilt by :meth:`reset`). The keyword
    arguments are the tuning constants described in the module docstring (defaults = the measured driver).
    """

    def __init__(self, noise: float = 0.0, *, lateral_accel: float = 210.0, brake_accel: float = 140.0,
                 lookahead_base: float = 6.0, lookahead_gain: float = 0.18, grass_speed: float = 25.0,
                 steer_tau_steps: float = 20.0, traction_slip: float = 8.0,
                 brake_gain: float = 0.05, grip_gas: float = 1.5, cte_gain: float = 0.03,
                 grass_wheels: int = 1, grass_brake: float = 0.3, yaw_gain: float = 0.15,
                 recovery_gain: float = 1.0, holds: float = 0.0) -> None:
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        if holds < 0:
            raise ValueError(f"holds must be >= 0, got {holds}")
        self.noise = float(noise)
        self.holds = float(holds)
        self.lateral_accel = float(lateral_accel)
        self.brake_accel = float(brake_accel)
        self.lookahead_base = float(lookahead_base)
        self.lookahead_gain = float(lookahead_gain)
        self.grass_speed = float(grass_speed)
        self.steer_tau_steps = float(steer_tau_steps)
        self.traction_slip = float(traction_slip)
        self.brake_gain = float(brake_gain)
        self.grip_gas = float(grip_gas)
        self.cte_gain = float(cte_gain)
        self.grass_wheels = int(grass_wheels)
        self.grass_brake = float(grass_brake)
        self.yaw_gain = float(yaw_gain)
        self.recovery_gain = float(recovery_gain)
        self.episode_info: dict[str, float] = {"steer_sigma": 0.0, "burst_prob": 0.0}
        # per-episode state, rebuilt by reset()
        self._points: np.ndarray | None = None  # (N, 2) centre line
        self._seg: np.ndarray | None = None  # (N,) length of segment i -> i+1
        self._profile: np.ndarray | None = None  # (N,) target speed at each waypoint
        self._index = 0
        self._rng: np.random.Generator | None = None
        self._ou = 0.0
        self._burst_left = 0
        self._burst_action = np.zeros(3, dtype=np.float32)
        self._hold_rng: np.random.Generator | None = None
        self._hold_left = 0
        self._hold_action = np.zeros(3, dtype=np.float64)

    # --- episode setup ------------------------------------------------------------------------------

    def reset(self, env: Any, seed: int) -> None:
        """Read the new track, build the speed profile and draw this episode's noise levels."""
        track = np.asarray(env.unwrapped.track, dtype=np.float64)
        points = track[:, 2:4]
        self._points = points
        seg = np.linalg.norm(np.roll(points, -1, axis=0) - points, axis=1)
        self._seg = seg
        self._profile = self._speed_profile(points, seg)
        self._index = self._nearest(np.asarray(env.unwrapped.car.hull.position, dtype=np.float64), None)

        self._rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, NOISE_SEED_SALT])
        steer_sigma = float(self._rng.uniform(0.0, 0.3 * self.noise)) if self.noise > 0 else 0.0
        burst_prob = float(self._rng.uniform(0.0, 0.01 * self.noise)) if self.noise > 0 else 0.0
        self.episode_info = {"steer_sigma": steer_sigma, "burst_prob": burst_prob}
        self._ou = 0.0
        self._burst_left = 0
        self._burst_action = np.zeros(3, dtype=np.float32)
        self._hold_rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, HOLD_SEED_SALT]) if self.holds > 0 else None
        self._hold_left = 0

    def _speed_profile(self, points: np.ndarray, seg: np.ndarray) -> np.ndarray:
        """Target speed per waypoint: cornering limit from curvature, then braking limits backwards."""
        n = len(points)
        direction = np.roll(points, -1, axis=0) - points
        heading = np.arctan2(direction[:, 1], direction[:, 0])
        turn = np.angle(np.exp(1j * (heading - np.roll(heading, 1))))  # heading change at waypoint i
        # curvature averaged over ±2 waypoints (the car cuts a little inside the corner)
        window = 2
        kernel = np.ones(2 * window + 1)
        padded = np.concatenate([turn[-window:], turn, turn[:window]])
        padded_len = np.concatenate([seg[-window:], seg, seg[:window]])
        curvature = np.abs(np.convolve(padded, kernel, "valid")) / np.convolve(padded_len, kernel, "valid")
        speed = np.sqrt(self.lateral_accel / np.maximum(curvature, 1e-6))
        speed = np.minimum(speed, TOP_SPEED)
        # braking: v_i <= sqrt(v_{i+1}^2 + 2 a d_i), solved backwards; two passes close the loop
        for _ in range(2):
            for i in range(n - 1, -1, -1):
                nxt = speed[(i + 1) % n]
                speed[i] = min(speed[i], math.sqrt(nxt * nxt + 2.0 * self.brake_accel * seg[i]))
        return speed

    def _nearest(self, position: np.ndarray, around: int | None) -> int:
        """Index of the nearest waypoint, searched near ``around`` (or everywhere): progress stays in order."""
        assert self._points is not None
        n = len(self._points)
        if around is not None:
            candidates = (around + np.arange(-8, 9)) % n  # the car moves < 1 waypoint per step
            dist = np.linalg.norm(self._points[candidates] - position, axis=1)
            best = int(np.argmin(dist))
            if dist[best] < 60.0:  # a car thrown off the road still belongs to this stretch of it
                return int(candidates[best])
        dist = np.linalg.norm(self._points - position, axis=1)
        return int(np.argmin(dist))

    # --- control ------------------------------------------------------------------------------------

    def act(self, observation: np.ndarray, env: Any, step: int, episode_reward: float) -> np.ndarray:
        """The action ``[steer, gas, brake]`` (float32) for the current state of ``env``."""
        assert self._points is not None and self._profile is not None and self._seg is not None
        car = env.unwrapped.car
        hull = car.hull
        position = np.array(hull.position, dtype=np.float64)
        velocity = np.array(hull.linearVelocity, dtype=np.float64)
        speed = float(np.hypot(*velocity))
        n = len(self._points)
        self._index = self._nearest(position, self._index)

        # signed distance from the centre line (+ = the centre line is to the car's right)
        foot = self._point_ahead(self._index, position, 0.0)
        cross_track = float(hull.GetLocalPoint((float(foot[0]), float(foot[1])))[0])
        off_centre = float(np.hypot(*(position - foot)))
        # pure pursuit: the point lookahead units further along the centre line (further when far off it,
        # so the way back joins the road at a shallow angle)
        lookahead = self.lookahead_base + self.lookahead_gain * speed
        lookahead += self.recovery_gain * max(0.0, off_centre - 4.0)
        target = self._point_ahead(self._index, position, lookahead)
        local_x, local_y = hull.GetLocalPoint((float(target[0]), float(target[1])))
        dist2 = local_x * local_x + local_y * local_y
        if local_y <= 0.0:  # target behind (after a spin): full lock towards it
            steer = 1.0 if local_x >= 0.0 else -1.0
        else:
            steer = math.atan(2.0 * WHEELBASE * local_x / max(dist2, 1e-6))
            if self.cte_gain:  # cross-track term: pulls back to the centre line against a steering bias
                steer += self.cte_gain * float(np.clip(cross_track, -10.0, 10.0))
            if self.yaw_gain:  # yaw-rate damping towards the arc's yaw rate (+ = counter-clockwise)
                desired_yaw = -speed * 2.0 * local_x / max(dist2, 1e-6)
                steer -= self.yaw_gain * (desired_yaw - hull.angularVelocity)
        heading_error = abs(math.atan2(local_x, local_y))

        # target speed: the profile slightly ahead (actuation latency), lower on grass or when misaligned
        lead = int(speed * 0.15 / 3.5) + 1
        target_speed = float(np.min(self._profile[(self._index + np.arange(lead + 1)) % n]))
        wheels_off = sum(len(w.tiles) == 0 for w in car.wheels)
        on_grass = wheels_off >= self.grass_wheels
        if on_grass:
            target_speed = min(target_speed, self.grass_speed)
        if heading_error > 1.0 and on_grass:  # pointing away from the road ahead (a spin, a noise burst)
            target_speed = min(target_speed, 20.0)

        error = target_speed - speed
        if error >= 0:
            gas, brake = min(1.0, 0.1 * error + 0.2), 0.0
        else:
            gas, brake = 0.0, min(self.grass_brake if on_grass else 0.8, -self.brake_gain * error)
        # traction control: rear wheels spinning much faster than the ground speed → cut gas
        forward = np.array(hull.GetWorldVector((0, 1)), dtype=np.float64)
        ground = float(forward @ velocity)
        rear_speed = max(w.omega * w.wheel_rad for w in car.wheels[2:4])
        slip = rear_speed - ground
        if slip > self.traction_slip:
            gas = min(gas, max(0.0, 1.0 - (slip - self.traction_slip) / self.traction_slip))
        # friction circle: while cornering hard, the rear tyres have little grip left for driving
        if self.grip_gas:
            lateral = speed * abs(hull.angularVelocity) / self.lateral_accel
            gas = min(gas, max(0.0, 1.0 - lateral * lateral) * self.grip_gas)
        action = np.array([np.clip(steer, -1.0, 1.0), gas, brake], dtype=np.float64)
        return self._apply_hold(self._apply_noise(action), step).astype(np.float32)

    def _point_ahead(self, index: int, position: np.ndarray, distance: float) -> np.ndarray:
        """The centre-line point ``distance`` units ahead of the car's projection near waypoint ``index``."""
        assert self._points is not None and self._seg is not None
        n = len(self._points)
        # project the car onto segment index -> index+1 to start from an exact arc position
        a, b = self._points[index], self._points[(index + 1) % n]
        seg_len = self._seg[index]
        t = float(np.clip(np.dot(position - a, b - a) / max(seg_len * seg_len, 1e-9), 0.0, 1.0))
        remaining = distance + t * seg_len
        i = index
        while remaining > self._seg[i]:
            remaining -= self._seg[i]
            i = (i + 1) % n
        a, b = self._points[i], self._points[(i + 1) % n]
        return a + (b - a) * (remaining / max(self._seg[i], 1e-9))

    def _apply_hold(self, action: np.ndarray, step: int) -> np.ndarray:
        """The action of a hold under way, or ``action`` (the driver's own steps run as usual under a hold)."""
        rng = self._hold_rng
        if rng is None:
            return action
        if self._hold_left == 0 and step >= HOLD_AFTER and float(rng.uniform()) < self.holds / 1000.0:
            self._hold_left = int(rng.integers(*HOLD_STEPS))
            kind = int(rng.integers(3))  # 0 straight on, 1 a steering angle, 2 coasting
            gas = float(rng.uniform(0.3, 1.0))
            self._hold_action = np.array([0.0, gas, 0.0] if kind == 0 else
                                         [float(rng.uniform(-1.0, 1.0)), gas, 0.0] if kind == 1 else
                                         [0.0, 0.0, 0.0], dtype=np.float64)
        if self._hold_left > 0:
            self._hold_left -= 1
            return self._hold_action.copy()
        return action

    def _apply_noise(self, action: np.ndarray) -> np.ndarray:
        if self.noise <= 0 or self._rng is None:
            return action
        rng = self._rng
        sigma = self.episode_info["steer_sigma"]
        rho = math.exp(-1.0 / self.steer_tau_steps)
        self._ou = rho * self._ou + sigma * math.sqrt(1.0 - rho * rho) * float(rng.standard_normal())
        start_burst = float(rng.uniform()) < self.episode_info["burst_prob"]
        if self._burst_left == 0 and start_burst:
            self._burst_left = int(rng.integers(5, 20))
            brake = float(rng.uniform()) * (float(rng.uniform()) < 0.3)
            self._burst_action = np.array([rng.uniform(-1, 1), rng.uniform(0, 1), brake], dtype=np.float32)
        if self._burst_left > 0:
            self._burst_left -= 1
            return self._burst_action.astype(np.float64)
        action = action.copy()
        action[0] = float(np.clip(action[0] + self._ou, -1.0, 1.0))
        return action
