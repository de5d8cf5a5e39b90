#!/usr/bin/env python3
"""LIBERO success rates through a policy server (`invoke serve`), with openpi's client loop (examples/libero/main.py):
wait 10 dummy steps while objects settle, then each step send both cameras rotated 180 degrees and resized with pad
to 224, the state (eef position, axis-angle, gripper) and the task prompt, and execute the first 5 actions of each
chunk before asking again; an episode succeeds when the simulator says done within the suite's step budget.

    python3 scripts/libero_eval.py --port 8000 --suites libero_spatial,libero_object --episodes 50     # LIBERO
    python3 scripts/libero_eval.py --port 8000 --env standin --episodes 2                              # no LIBERO

--env libero needs LIBERO's simulator (the `libero` package, robosuite, MuJoCo and LIBERO's scene assets); PyPI's
`libero` package ships no scene assets (they come from a hub download), so it cannot run from the package index alone.
--env standin is a small simulator of this project (move the end effector onto a target drawn on the camera image,
declared in triforce/data/io_specs.toml [libero.standin]) that speaks LIBERO's observation keys, so the same loop is
tested without LIBERO. The JSON report has per-suite success rates and the plan's criterion (LIBERO >= 95% for plan a,
>= 90% for plan b), which applies only to a real checkpoint in the real simulator.
Exit codes (as the validation scripts): 0 done (criterion passed or not applicable), 1 criterion failed, 2 bad input
or no server.
"""

from __future__ import annotations

import argparse
import collections
import math
import sys
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a checkout without installing

from triforce import report as rep  # noqa: E402
from triforce.errors import TriforceError  # noqa: E402
from triforce.runtime.preprocess import resize_with_pad  # noqa: E402
from triforce.server import PolicyClient  # noqa: E402


def libero_spec() -> dict:
    return tomllib.loads(resources.files("triforce.data").joinpath("io_specs.toml").read_text())["libero"]


# ── the client loop (LIBERO's observation keys) ─────────────────────────────────────────────────────────────────────
def quat_to_axis_angle(quat) -> np.ndarray:
    """(x, y, z, w) unit quaternion -> axis * angle, as LIBERO's training data stores the end-effector rotation."""
    x, y, z, w = (float(v) for v in quat)
    w = min(1.0, max(-1.0, w))
    den = math.sqrt(1.0 - w * w)
    if math.isclose(den, 0.0):
        return np.zeros(3)
    return np.array([x, y, z]) * 2.0 * math.acos(w) / den


def make_request(obs: dict, prompt: str, size: int) -> dict:
    """Simulator observation -> what openpi's LIBERO client sends (images upside down in LIBERO's renders)."""
    def camera(key):
        return resize_with_pad(np.ascontiguousarray(obs[key][::-1, ::-1]), size)

    return {
        "observation/image": camera("agentview_image"),
        "observation/wrist_image": camera("robot0_eye_in_hand_image"),
        "observation/state": np.concatenate([obs["robot0_eef_pos"], quat_to_axis_angle(obs["robot0_eef_quat"]),
                                             obs["robot0_gripper_qpos"]]).astype(np.float32),
        "prompt": prompt,
    }


@dataclass
class Episode:
    success: bool
    steps: int
    queries: int


def run_episode(task, episode: int, client, max_steps: int, spec: dict) -> Episode:
    obs = task.reset(episode)
    for _ in range(spec["num_steps_wait"]):
        obs, _, _, _ = task.step(spec["dummy_action"])
    plan: collections.deque = collections.deque()
    queries = 0
    for step in range(max_steps):
        if not plan:
            chunk = np.asarray(client.infer(make_request(obs, task.prompt, spec["resize"]))["actions"])
            queries += 1
            if chunk.ndim != 2 or chunk.shape[0] < spec["replan_steps"] or chunk.shape[1] != 7:
                raise TriforceError(f"server returned actions {chunk.shape}: LIBERO needs at least "
                                    f"{spec['replan_steps']} steps of 7 dims (serve a LIBERO config)")
            plan.extend(chunk[: spec["replan_steps"]])
        obs, _, done, _ = task.step(plan.popleft().tolist())
        if done:
            return Episode(True, step + 1, queries)
    return Episode(False, max_steps, queries)


def evaluate(client, suites, episodes: int, spec: dict, progress=None) -> dict:
    """suite name -> {episodes, successes, success_rate, per_task}; `progress(suite, task, episode, result)`."""
    results = {}
    for suite in suites:
        per_task = []
        for task in suite.tasks:
            wins = 0
            for episode in range(episodes):
                result = run_episode(task, episode, client, suite.max_steps, spec)
                wins += result.success
                if progress:
                    progress(suite, task, episode, result)
            per_task.append({"prompt": task.prompt, "episodes": episodes, "successes": wins})
            task.close()
        total = len(per_task) * episodes
        successes = sum(t["successes"] for t in per_task)
        results[suite.name] = {"episodes": total, "successes": successes, "success_rate": successes / total,
                               "per_task": per_task}
    return results


def criterion(results: dict, metadata: dict, env: str, spec: dict) -> dict:
    """The plan's LIBERO floor; it applies to a real checkpoint in the real simulator only."""
    plan = metadata.get("plan")
    threshold = spec["criteria"].get(plan)
    if threshold is None:
        return {"applies": False, "reason": f"no LIBERO criterion for plan {plan!r}"}
    if metadata.get("synthetic", True) or env != "libero":
        return {"applies": False, "threshold": threshold,
                "reason": "synthetic weights" if metadata.get("synthetic", True) else "stand-in simulator"}
    return {"applies": True, "threshold": threshold,
            "passed": all(r["success_rate"] >= threshold for r in results.values())}


# ── the stand-in simulator ──────────────────────────────────────────────────────────────────────────────────────────
class StandInTask:
    """Reach a target: actions[:3] move the end effector by step_scale each (clipped to [-1, 1]); done within
    `tolerance`. Episode e starts at a seeded point 0.2-0.6 m from the target. Renders like LIBERO: 256 px, upside down."""

    def __init__(self, prompt: str, target, seed: int, cfg: dict, resolution: int):
        self.prompt, self.target = prompt, np.asarray(target, np.float64)
        self.seed, self.cfg, self.res = seed, cfg, resolution
        self.pos = self.target.copy()
        self.gripper = 0.04

    def reset(self, episode: int) -> dict:
        rng = np.random.default_rng([self.seed, episode, sum(self.prompt.encode())])
        direction = rng.standard_normal(3)
        self.pos = self.target + direction / np.linalg.norm(direction) * rng.uniform(0.2, 0.6)
        return self._obs()

    def step(self, action):
        action = np.asarray(action, np.float64)
        if action.shape != (7,) or not np.isfinite(action).all():
            raise TriforceError(f"stand-in simulator got action {action.shape}: expected 7 finite values")
        self.pos = self.pos + np.clip(action[:3], -1, 1) * self.cfg["step_scale"]
        self.gripper = 0.04 if action[6] < 0 else 0.0
        done = bool(np.linalg.norm(self.pos - self.target) < self.cfg["tolerance"])
        return self._obs(), float(done), done, {}

    def close(self):
        pass

    def _obs(self) -> dict:
        return {"agentview_image": self._render(self.pos, self.target, 1.0),
                "robot0_eye_in_hand_image": self._render(self.pos, self.target, 3.0, centre=self.pos),
                "robot0_eef_pos": self.pos.copy(), "robot0_eef_quat": np.array([0.0, 0.0, 0.0, 1.0]),
                "robot0_gripper_qpos": np.array([self.gripper, -self.gripper])}

    def _render(self, pos, target, zoom, centre=np.zeros(3)) -> np.ndarray:
        img = np.full((self.res, self.res, 3), 96, np.uint8)
        for point, colour in ((target, (220, 40, 40)), (pos, (40, 220, 40))):
            u, v = ((point[:2] - centre[:2]) * zoom * self.res / 2 + self.res / 2).astype(int)
            r = max(2, int(6 + 4 * point[2]))
            img[max(0, v - r): max(0, v + r), max(0, u - r): max(0, u + r)] = colour
        return img[::-1, ::-1].copy()


@dataclass
class Suite:
    name: str
    max_steps: int
    tasks: list


def standin_suites(names: list[str], seed: int, spec: dict) -> list[Suite]:
    cfg = spec["standin"]
    known = cfg["suites"]
    suites = []
    for name in names:
        if name not in known:
            raise TriforceError(f"unknown stand-in suite '{name}': choose from {', '.join(known)}")
        tasks = [StandInTask(t["prompt"], t["target"], seed, cfg, spec["env_resolution"]) for t in known[name]["tasks"]]
        suites.append(Suite(name, cfg["max_steps"], tasks))
    return suites


# ── LIBERO itself ───────────────────────────────────────────────────────────────────────────────────────────────────
class LiberoTask:
    def __init__(self, suite, index: int, seed: int, resolution: int):
        from libero.libero import get_libero_path
        from libero.libero.envs import OffScreenRenderEnv

        task = suite.get_task(index)
        self.prompt = str(task.language)
        self.init_states = suite.get_task_init_states(index)
        bddl = Path(get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file
        self.env = OffScreenRenderEnv(bddl_file_name=str(bddl), camera_heights=resolution, camera_widths=resolution)
        self.env.seed(seed)  # the seed moves objects even with a fixed initial state (openpi's note)

    def reset(self, episode: int) -> dict:
        self.env.reset()
        return self.env.set_init_state(self.init_states[episode])

    def step(self, action):
        return self.env.step(action)

    def close(self):
        self.env.close()


def libero_suites(names: list[str], seed: int, episodes: int, spec: dict) -> list[Suite]:
    try:
        from libero.libero import benchmark
    except ImportError as err:
        raise TriforceError(f"LIBERO's simulator is not importable ({err}): install LIBERO with its assets, robosuite "
                            f"and MuJoCo, or run --env standin") from None
    known = benchmark.get_benchmark_dict()
    suites = []
    for name in names:
        if name not in known or name not in spec["max_steps"]:
            raise TriforceError(f"unknown LIBERO suite '{name}': choose from {', '.join(spec['max_steps'])}")
        suite = known[name]()
        tasks = [LiberoTask(suite, i, seed, spec["env_resolution"]) for i in range(suite.n_tasks)]
        if any(len(t.init_states) < episodes for t in tasks):
            raise TriforceError(f"{name} has {min(len(t.init_states) for t in tasks)} initial states per task: "
                                f"pass --episodes at most that")
        suites.append(Suite(name, spec["max_steps"][name], tasks))
    return suites


# ── command line ────────────────────────────────────────────────────────────────────────────────────────────────────
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="policy server address")
    p.add_argument("--port", type=int, default=8000, help="policy server port")
    p.add_argument("--env", choices=("libero", "standin"), default="libero", help="simulator")
    p.add_argument("--suites", default=None,
                   help="comma-separated suites (default: libero_spatial,libero_object,libero_goal,libero_10; "
                        "standin: all stand-in suites)")
    p.add_argument("--episodes", type=int, default=50, help="episodes per task (LIBERO has 50 initial states)")
    p.add_argument("--seed", type=int, default=7, help="simulator seed (openpi's default)")
    p.add_argument("--report", default=None, help="JSON report path (default: reports/libero_<config>_plan<plan>.json)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the server per request")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    spec = libero_spec()
    if args.episodes < 1:
        raise TriforceError(f"--episodes {args.episodes}: run at least one episode per task")
    default = ["libero_spatial", "libero_object", "libero_goal", "libero_10"] if args.env == "libero" \
        else list(spec["standin"]["suites"])
    names = [s for s in (args.suites.split(",") if args.suites else default) if s]
    suites = (libero_suites(names, args.seed, args.episodes, spec) if args.env == "libero"
              else standin_suites(names, args.seed, spec))
    from rich.progress import Progress

    with PolicyClient(args.host, args.port, args.timeout) as client, Progress() as bar:
        meta = client.metadata
        total = sum(len(s.tasks) for s in suites) * args.episodes
        job = bar.add_task(f"{args.env} via {meta.get('config')} plan {meta.get('plan')}", total=total)

        def progress(suite, task, episode, result):
            bar.advance(job)
            bar.console.print(f"{suite.name} | {task.prompt} | episode {episode}: "
                              f"{'success' if result.success else 'failure'} in {result.steps} steps, "
                              f"{result.queries} queries")

        results = evaluate(client, suites, args.episodes, spec, progress)
    report = {**rep.stamp(" ".join(sys.argv)), "env": args.env, "server": meta, "episodes_per_task": args.episodes, "seed": args.seed,
              "replan_steps": spec["replan_steps"], "suites": results, "criterion": criterion(results, meta, args.env, spec)}
    path = rep.write_json(Path(args.report or f"reports/libero_{meta.get('config')}_plan{meta.get('plan')}.json"), report)
    for name, r in results.items():
        print(f"{name}: {r['successes']}/{r['episodes']} = {r['success_rate']:.1%}")
    crit = report["criterion"]
    print(f"criterion: {'PASS' if crit.get('passed') else 'FAIL'} (>= {crit['threshold']:.0%})" if crit["applies"]
          else f"criterion: not applied ({crit['reason']})")
    print(f"report: {path}")
    return rep.EXIT_GATE_FAILED if crit.get("applies") and not crit["passed"] else rep.EXIT_PASS


if __name__ == "__main__":
    try:
        sys.exit(main())
    except TriforceError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(rep.EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
