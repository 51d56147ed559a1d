"""HCRMP's driving environment: highway-env's ``highway-v0`` in a light continuous-control configuration.

Spec section 6(e). The paper drives in CARLA (Town 2, several traffic densities); CARLA's server is not on PyPI, so
we use highway-env (MIT, ``pip install 'r1-recipes[driving]'``), which runs headless and seeded on a CPU
(VISION-NOTES section 3). The base configuration is the light continuous one measured there: 3 lanes, 20 vehicles,
10 Hz simulation, 5 Hz control, ``ContinuousAction`` (acceleration, steering) in [-1, 1]^2, about 10-30 ms a step.
Two changes of ours: the steering range is narrowed to +-0.1 rad (highway-env's +-pi/4 sends a random policy off
the road in 1-3 steps; with 0.1 rad an episode of random actions lasts about 12 steps) and leaving the road ends
the episode (``offroad_terminal``), as a collision does.

Observation: highway-env's ``Kinematics`` observation of the ego and its 5 nearest vehicles (ego first, then
sorted by distance; absent rows are zero) with features ``[presence, x, y, vx, vy, cos_h, sin_h]``, normalised and
relative to the ego (the ego row is absolute), flattened: ``obs_dim = 6 * 7 = 42`` float32.

Reward terms, one per critic (`TERMS`). The paper's component definitions and constants were not retrieved
(spec 6(b)); these are ours [unverified]:

- ``safety = -1`` when the ego collided (highway-env's ``rewards["collision_reward"]``) or left the road
  (``rewards["on_road_reward"] == 0``), else ``0``;
- ``efficiency = clip((v cos(heading) - 20) / (30 - 20), 0, 1)``: highway-env's ``rewards["high_speed_reward"]``,
  the forward speed mapped from its ``reward_speed_range`` [20, 30] m/s to [0, 1];
- ``comfort = -||a_t - a_{t-1}||_2 / (2 sqrt 2)`` in [-1, 0]: minus the change of the (clipped) action, scaled by
  its largest possible value; ``a_{-1} = 0`` at the start of an episode.

``done`` is true on a collision, on leaving the road, or after ``horizon`` steps; ``info["success"]`` is true when
the episode reached the horizon without either. The horizon is a time limit: whoever bootstraps values should know
that ``done`` at the horizon is a truncation (``info["truncated"]``), not a terminal state.

Do not set ``SDL_VIDEODRIVER=dummy`` (it blanks highway-env's rendering, VISION-NOTES section 3); nothing here
renders, so no display is needed.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

TERMS = ("safety", "efficiency", "comfort")
"""The reward components, one critic each, in this order everywhere (critic index k = TERMS.index(name))."""

DIRECTIONS = ("front", "front-left", "left", "rear-left", "rear", "rear-right", "right", "front-right")
"""Where another vehicle is, seen from the ego (highway-env's y axis points to the right of the driving direction)."""

BASE_CONFIG: dict[str, Any] = {
    "lanes_count": 3,
    "vehicles_count": 20,
    "vehicles_density": 1.0,
    "simulation_frequency": 10,
    "policy_frequency": 5,
    "action": {"type": "ContinuousAction", "steering_range": [-0.1, 0.1]},
    "observation": {"type": "Kinematics", "vehicles_count": 6,
                    "features": ["presence", "x", "y", "vx", "vy", "cos_h", "sin_h"],
                    "normalize": True, "absolute": False, "order": "sorted", "see_behind": True},
    "offroad_terminal": True,
    "duration": 10_000,  # [s]; the horizon is counted here, in control steps
}
"""The light continuous highway-v0 configuration (VISION-NOTES section 3) with our two changes (module docstring)."""

DENSITIES: dict[str, dict[str, Any]] = {
    "low": {"vehicles_count": 10, "vehicles_density": 0.7},
    "medium": {"vehicles_count": 20, "vehicles_density": 1.0},
    "high": {"vehicles_count": 30, "vehicles_density": 1.5},
}
"""Traffic-density overrides of `BASE_CONFIG` (the paper evaluates "various traffic densities"; its values for
CARLA were not retrieved). ``vehicles_density`` scales the spacing highway-env spawns vehicles at (1 / density)."""

LANE_WIDTH = 4.0  # highway-env's StraightLane.DEFAULT_WIDTH [m]
_ALONGSIDE = 5.0  # |dx| under a vehicle length [m]: beside the ego, neither front nor rear
_SCENE_RANGE = 60.0  # [m] vehicles farther than this are left out of `scene()`
_SCENE_COUNT = 6  # at most this many nearest vehicles in `scene()`


def direction_of(dx: float, dy: float) -> str:
    """The `DIRECTIONS` entry for a vehicle at (dx, dy) metres from the ego (x forward, y to the right).

    >>> direction_of(20.0, 0.5), direction_of(-12.0, -4.0), direction_of(1.0, 4.0)
    ('front', 'rear-left', 'right')
    """
    side = "left" if dy < -LANE_WIDTH / 2 else "right" if dy > LANE_WIDTH / 2 else ""
    along = "front" if dx > _ALONGSIDE else "rear" if dx < -_ALONGSIDE else ""
    if not side:
        return along or ("front" if dx >= 0 else "rear")
    return f"{along}-{side}" if along else side


class DrivingEnv:
    """One seeded, headless highway-env episode at a time, with per-term rewards for HCRMP's critics.

    ``reset(seed=None)``: the first reset uses the constructor's `seed`; later ones continue highway-env's
    random generator (so a fresh env with the same seed and the same actions replays the same episodes).
    """

    def __init__(self, density: str = "medium", *, seed: int = 0, horizon: int = 40) -> None:
        if density not in DENSITIES:
            raise ValueError(f"DrivingEnv: density={density!r}; use one of {sorted(DENSITIES)}")
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        try:
            from highway_env.envs.highway_env import HighwayEnv
        except ImportError as err:  # pragma: no cover - depends on the install
            raise ImportError("HCRMP's DrivingEnv needs highway-env: pip install 'r1-recipes[driving]'") from err
        config = {**BASE_CONFIG, **DENSITIES[density]}
        self.density = density
        self.seed = seed
        self.horizon = horizon
        self.env = HighwayEnv(config=config, render_mode=None)
        self._n_obs_rows = config["observation"]["vehicles_count"]
        self._n_features = len(config["observation"]["features"])
        self._seeded = False
        self._t = 0
        self._done = True
        self._prev_action = np.zeros(2, dtype=np.float32)

    @property
    def obs_dim(self) -> int:
        return self._n_obs_rows * self._n_features

    @property
    def action_dim(self) -> int:
        return 2

    def reset(self, seed: int | None = None) -> np.ndarray:
        if seed is None and not self._seeded:
            seed = self.seed
        obs, _ = self.env.reset(seed=seed)
        self._seeded = True
        self._t = 0
        self._done = False
        self._prev_action = np.zeros(2, dtype=np.float32)
        return self._flat(obs)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, dict[str, float], bool, dict[str, Any]]:
        """Apply ``action = [acceleration, steering]`` in [-1, 1]^2 (clipped). Returns (obs, terms, done, info)."""
        if self._done:
            raise RuntimeError("DrivingEnv.step after the episode ended; call reset()")
        a = np.clip(np.asarray(action, dtype=np.float32).reshape(2), -1.0, 1.0)
        obs, _, _, _, hinfo = self.env.step(a)
        self._t += 1
        parts = hinfo["rewards"]
        crashed = bool(hinfo["crashed"])
        offroad = not bool(parts["on_road_reward"])
        terms = {
            "safety": -1.0 if (crashed or offroad) else 0.0,
            "efficiency": float(parts["high_speed_reward"]),
            "comfort": 0.0 - float(np.linalg.norm(a - self._prev_action)) / (2 * math.sqrt(2)),
        }
        self._prev_action = a
        failed = crashed or offroad
        truncated = not failed and self._t >= self.horizon
        self._done = failed or truncated
        info = {"speed": float(hinfo["speed"]), "crashed": crashed, "offroad": offroad, "success": truncated,
                "truncated": truncated, "step": self._t, "action": a, "rewards": dict(parts)}
        return self._flat(obs), terms, self._done, info

    def scene(self) -> dict[str, Any]:
        """A compact description of the current state for the hinters.

        ``{"ego_speed": m/s, "ego_lane": 0 = leftmost, "lanes_count", "vehicles": [...]}``, each vehicle (the up to
        6 nearest within 60 m, nearest first) a dict ``{"dx", "dy", "dvx", "distance", "direction"}``: position
        relative to the ego in metres (x forward, y right), its x speed minus the ego's (negative: the ego closes
        in on a vehicle in front) and its `DIRECTIONS` entry.
        """
        road, ego = self.env.unwrapped.road, self.env.unwrapped.vehicle
        vehicles = []
        for v in road.close_vehicles_to(ego, _SCENE_RANGE, count=_SCENE_COUNT, see_behind=True, sort=True):
            dx, dy = (float(c) for c in v.position - ego.position)
            vehicles.append({"dx": dx, "dy": dy, "dvx": float(v.velocity[0] - ego.velocity[0]),
                             "distance": math.hypot(dx, dy), "direction": direction_of(dx, dy)})
        return {"ego_speed": float(ego.speed), "ego_lane": int(ego.lane_index[2]),
                "lanes_count": int(self.env.unwrapped.config["lanes_count"]), "vehicles": vehicles}

    def close(self) -> None:
        self.env.close()

    def _flat(self, obs: np.ndarray) -> np.ndarray:
        return np.asarray(obs, dtype=np.float32).reshape(self.obs_dim)  # (rows * features,)


__all__ = ["BASE_CONFIG", "DENSITIES", "DIRECTIONS", "TERMS", "DrivingEnv", "direction_of"]
