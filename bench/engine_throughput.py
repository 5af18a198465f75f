"""Training throughput: stable-baselines3 DQN through the Gymnasium wrapper vs this engine's
``dql`` agent through its vectorised trainer, same market, same network, same replay ratio.

    python bench/engine_throughput.py            # 50,000 env steps per run, median of 3
    python bench/engine_throughput.py --quick    # 12,000 env steps per run (about a minute)

Both learn on the training split of ``data/STOCKS_GOOGL.csv`` (GOOGL daily, window 10, the
engine's features) with an MLP 64-64, Huber loss, Adam 3e-4, gamma 0.99, epsilon 1 -> 0.05 over
the first half of the env steps, a 50,000-transition buffer, learning from env step 1,000, and the
same replay ratio: 16 gradient samples per env step (SB3: ``train_freq=4`` x ``batch_size=64``;
ours: ``--batch_size`` 1,024 with 256 environments, i.e. 4 updates of 1,024 per vectorised step).
The target network is copied every 2,000 env steps in both. CPU, one torch thread.

Printed (median of ``--repeats`` runs, seeds 0, 1, 2): env steps per second of each and the ratio;
the limit, measured in the same process: samples per second of a bare update loop (the same
network and optimiser, our batch size, a batch already sampled) divided by the replay ratio; ours
as a fraction of that limit; and the greedy test-split result of both after the same number of
env steps (total net log return, annualised Sharpe; buy and hold for scale).

Targets (issue 3): ours >= 10x SB3, and within 2x of the limit (>= 0.5 of it).

What limits it (``--profile`` prints a cProfile of one of our runs; figures from one here, 2
shared vCPU, torch 2.13 CPU, batch 1,024, 256 environments, share of the training loop):

- 82%: the gradient updates. Forwards of the online and target networks 40%, backward 22%, the
  multi-tensor Adam step 6%, gradient clipping 5%. At 64-64 an update is ~25 small kernels whose
  cost is mostly PyTorch's per-op dispatch (a few microseconds each), not arithmetic: that is why
  the batch size, not the network, sets the limit (batch 64 -> ~6,600 env steps/s, 1,024 ->
  ~20,000-50,000 depending on the machine's load).
- 10%: sampling the replay buffer (``index_select`` of 2 x 1,024 observations of 10 x 11 floats;
  advanced indexing ``obs[idx]`` was 4x slower and cost 16%).
- 6%: everything once per vectorised step, amortised over 256 environments and 4 updates:
  acting (one forward of 256 observations), the environment step, the n-step accumulator and the
  buffer writes. Validation after each episode adds ~4% (the "with validation" figure).
- SB3 pays Python per env step: one env step, a forward for one observation, buffer bookkeeping,
  and an update of 64 every 4 steps with the same fixed per-call costs for 16x fewer samples.
- Process start: constructing any ``torch.optim`` optimiser imports ``torch._dynamo`` (~4 s on
  this machine), so the agent uses its own foreach Adam (:class:`engine.agents.Adam`).

On a GPU (where ``torch.cuda.is_available()``; else the run says "no GPU here"): the same
run prints the GPU figures too (``--gpu_only``: only those): for (n_envs, batch) pairs at the
same replay ratio (``engine.profile.GPU_PAIRS``, the pairs ``profile --fill`` tries on a GPU:
256/1,024 up to 8,192/32,768, 4 updates per vectorised step), ours env
steps/s (the median episode of the second half, past torch.compile's warm-up), the bare-update
limit at that batch on that GPU and ours as a fraction of it, the best pair, and SB3 DQN on the
same GPU. ``--gpu_device cpu`` runs that code on the CPU (``bench/gpu_check.sh --cpu-dry-run``).
What the GPU path does (engine.env, engine.train): the environment's step runs on the device
with no host sync (positions, rewards, the differential-ratio state on the device; the host
keeps only the deterministic schedule), replay and the update stay there (no ``.item()``
anywhere in a step), and ``--compile auto`` compiles the update's loss with torch.compile on
CUDA. Expected there: the update launch-bound (~25 kernels, ~0.2-0.5 ms whatever the batch), so
large batches and many environments per step; not measured yet: no GPU was available to this
work (``bench/gpu_check.sh`` is the prepared measurement).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from engine.config import Config  # noqa: E402
from engine.profile import GPU_PAIRS, loop_seconds  # noqa: E402
from engine.train import PreparedData, greedy_pass, prepare_data, run_training  # noqa: E402

REPLAY_RATIO = 16.0  # SB3: train_freq 4 x batch 64
TARGET_EVERY_ENV_STEPS = 2000
LEARNING_STARTS = 1000
BUFFER = 50_000
LR = 3e-4
DATA = "STOCKS_GOOGL.csv"


def base_config(seed: int, batch: int, n_envs: int, episodes: int, device: str = "cpu",
                **extra: Any) -> Config:
    updates_between_targets = max(1, round(TARGET_EVERY_ENV_STEPS * REPLAY_RATIO / batch))
    return Config(data_file=DATA, agent_type="dql", hidden_sizes=(64, 64), seed=seed,
                  batch_size=batch, n_envs=n_envs, replay_ratio=REPLAY_RATIO, lr=LR,
                  gamma=0.99, buffer_size=max(BUFFER, 4 * batch), learning_starts=LEARNING_STARTS,
                  target_update_freq=updates_between_targets, eps_start=1.0, eps_end=0.05,
                  eps_fraction=0.5, episodes=episodes, checkpoint_every=0,
                  torch_threads=1, device=device, **extra).resolved()


def test_result(returns: np.ndarray, data: PreparedData) -> dict[str, float]:
    from engine.metrics import compute_metrics

    pos = np.zeros(len(returns))
    m = compute_metrics(returns, pos, data.bars_per_year)
    return {"log_return": float(np.sum(returns)), "sharpe": float(m["sharpe_ratio"] or 0.0)}


def run_ours(data: PreparedData, seed: int, env_steps: int, batch: int,
             n_envs: int, device: str = "cpu", **extra: Any) -> dict[str, Any]:
    per_episode = math.ceil(data.train_steps / n_envs) * n_envs
    episodes = max(1, math.ceil(env_steps / per_episode))
    cfg = base_config(seed, batch, n_envs, episodes, device, **extra)
    t0 = time.perf_counter()
    result = run_training(cfg, data=data, log=lambda _m: None)
    wall = time.perf_counter() - t0
    if device != "cpu":  # the median episode of the second half: past torch.compile's and the
        # device's warm-up, which the first learning episodes pay
        rates = [h["steps_per_s"] for h in result.history[len(result.history) // 2:]
                 if h["steps_per_s"]]
        return {"env_steps": result.env_steps, "steps_per_s": statistics.median(rates),
                "wall_steps_per_s": result.env_steps / wall, "updates": result.updates}
    loop_time, _, _ = loop_seconds(result.history)  # the trainer's own timing (engine.profile)
    _, ret = greedy_pass(result.net, data, data.test, cfg)
    return {"env_steps": result.env_steps, "steps_per_s": result.env_steps / loop_time,
            "wall_steps_per_s": result.env_steps / wall, "updates": result.updates,
            "test": test_result(ret, data)}


def run_sb3(data: PreparedData, seed: int, env_steps: int, device: str = "cpu"
            ) -> dict[str, Any]:
    from stable_baselines3 import DQN

    from engine.gym_env import TradingGymEnv

    cfg = base_config(seed, 64, 1, 1)
    b = int(data.train.stop)
    env = TradingGymEnv(data.features[:b], data.close[:b], window=cfg.window,
                        transaction_cost=cfg.transaction_cost, slippage=cfg.slippage,
                        reward="profit", start=data.start, seed=seed,
                        reward_scale=_reward_scale(data))
    model = DQN("MlpPolicy", env, learning_rate=LR, buffer_size=BUFFER,
                learning_starts=LEARNING_STARTS, batch_size=64, train_freq=4, gradient_steps=1,
                gamma=0.99, target_update_interval=TARGET_EVERY_ENV_STEPS,
                exploration_fraction=0.5, exploration_initial_eps=1.0,
                exploration_final_eps=0.05, max_grad_norm=10.0,
                policy_kwargs={"net_arch": [64, 64]}, seed=seed, device=device, verbose=0)
    from stable_baselines3.common.logger import Logger

    model.set_logger(Logger(folder=None, output_formats=[]))  # no SB3-* folder in /tmp
    t0 = time.perf_counter()
    model.learn(total_timesteps=env_steps)
    wall = time.perf_counter() - t0
    q_net = model.policy.q_net
    q_net.eval()

    def policy(obs: torch.Tensor) -> torch.Tensor:
        return q_net(obs.reshape(obs.shape[0], -1).to(device)).argmax(dim=1)

    from engine.env import evaluate_policy

    a, z = int(data.test.start), int(data.test.stop)
    with torch.no_grad():
        _, ret = evaluate_policy(data.features[:z], data.close[:z], policy, cfg.window, start=a,
                                 transaction_cost=cfg.transaction_cost, slippage=cfg.slippage)
    return {"env_steps": env_steps, "steps_per_s": env_steps / wall,
            "test": test_result(ret[a:], data)}


def _reward_scale(data: PreparedData) -> float:
    close = data.close[data.start:int(data.train.stop)]
    return 1.0 / float(np.std(np.diff(np.log(close))))


def bare_update_limit(data: PreparedData, batch: int, seconds: float = 2.0,
                      device: str = "cpu", **extra: Any) -> float:
    """Samples per second of the update alone (same net, optimiser and batch size)."""
    from engine.agents import DQNAgent
    from engine.replay import Batch

    cfg = base_config(0, batch, 1, 1, device, **extra)
    obs_shape = (cfg.window, data.features.shape[1] + 1)
    agent = DQNAgent(cfg, obs_shape, 3, device)
    gen = torch.Generator().manual_seed(0)
    b = Batch(*(t.to(device) for t in (
        torch.randn(batch, *obs_shape, generator=gen), torch.randint(3, (batch,), generator=gen),
        torch.randn(batch, generator=gen), torch.randn(batch, *obs_shape, generator=gen),
        torch.full((batch,), 0.99), torch.arange(batch), torch.ones(batch))))
    wait = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(20):
        agent.update(b)
    wait()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(20):
            agent.update(b)
        wait()
        n += 20
    return n * batch / (time.perf_counter() - t0)


def gpu_figures(data: PreparedData, env_steps: int, device: str = "cuda",
                pairs: tuple[tuple[int, int], ...] = GPU_PAIRS, sb3: bool = True,
                seconds: float = 2.0) -> dict[str, Any]:
    """The same figures on ``device`` (a GPU), in this run: for each (n_envs, batch) at the same
    replay ratio, ours env steps/s and the bare-update limit at that batch; the best pair; SB3 on
    the same device. ``device="cpu"`` runs the same code on the CPU (bench/gpu_check.sh's dry
    run, with tiny sizes)."""
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "CPU (dry run)"
    print(f"\n{device} ({name}): dql 64-64, replay ratio {REPLAY_RATIO:g}, torch.compile of the "
          f"update per --compile auto, the environment's step on the device")
    rows = []
    for n_envs, batch in pairs:
        steps = max(env_steps, 8 * n_envs * math.ceil(data.train_steps / n_envs))
        ours = run_ours(data, 0, steps, batch, n_envs, device, step_on_device="on")
        limit = bare_update_limit(data, batch, seconds, device) / REPLAY_RATIO
        rows.append({"n_envs": n_envs, "batch": batch, "steps_per_s": ours["steps_per_s"],
                     "limit": limit, "fraction": ours["steps_per_s"] / limit,
                     "updates": ours["updates"]})
        print(f"  n_envs {n_envs:>5}, batch {batch:>6}: ours {ours['steps_per_s']:>12,.0f} env "
              f"steps/s, limit {limit:>12,.0f}, ours/limit {rows[-1]['fraction']:.2f}",
              flush=True)
    best = max(rows, key=lambda r: r["steps_per_s"])
    out: dict[str, Any] = {"device": device, "device_name": name, "pairs": rows, "best": best}
    print(f"  best: n_envs {best['n_envs']}, batch {best['batch']}: {best['steps_per_s']:,.0f} "
          f"env steps/s = {best['fraction']:.2f} of the bare-update limit at that batch")
    try:
        import stable_baselines3  # noqa: F401
    except ImportError:
        if sb3:
            print("  SB3 DQN: stable-baselines3 is not installed here (bench/gpu_check.sh says "
                  "how to bring its wheels)")
        sb3 = False
    if sb3:
        s = run_sb3(data, 0, min(env_steps, 12_000), device)["steps_per_s"]
        out["sb3_steps_per_s"] = s
        print(f"  SB3 DQN on the same device     {s:>10,.0f} env steps/s; ours (best) / SB3 "
              f"{best['steps_per_s'] / s:,.1f}x")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="12,000 env steps per run")
    parser.add_argument("--env_steps", type=int, default=0, help="env steps per run")
    parser.add_argument("--batch_size", type=int, default=1024)
    parser.add_argument("--n_envs", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip_sb3", action="store_true")
    parser.add_argument("--profile", action="store_true", help="cProfile one run of ours")
    parser.add_argument("--gpu_only", action="store_true", help="only the GPU figures")
    parser.add_argument("--gpu_device", default="cuda",
                        help="device of the GPU figures (cpu: a dry run of their code)")
    parser.add_argument("--gpu_pairs", default="",
                        help="n_envs:batch pairs of the GPU figures, e.g. 1024:4096,4096:16384")
    parser.add_argument("--json", default="", help="write the GPU figures to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    env_steps = args.env_steps or (12_000 if args.quick else 50_000)
    data = prepare_data(dataclasses.replace(Config(data_file=DATA), window=10))
    print(f"market: {DATA}, train split {data.train_steps:,} decision bars, test "
          f"{int(data.test.stop) - int(data.test.start):,} bars; {env_steps:,} env steps per run, "
          f"replay ratio {REPLAY_RATIO:g}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread")
    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        run_ours(data, 0, env_steps, args.batch_size, args.n_envs)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(20)
        return 0

    if not args.gpu_only:
        cpu_figures(data, args, env_steps)
    if args.gpu_device == "cpu" or torch.cuda.is_available():
        pairs = tuple(tuple(int(v) for v in p.split(":")) for p in args.gpu_pairs.split(",")
                      if p) or GPU_PAIRS
        figures = gpu_figures(data, env_steps, args.gpu_device, pairs,  # type: ignore[arg-type]
                              sb3=not args.skip_sb3)
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    else:
        print("\nGPU: no GPU here (torch.cuda.is_available() is False): CPU figures only")
    return 0


def cpu_figures(data: PreparedData, args: argparse.Namespace, env_steps: int) -> None:
    """The CPU figures: ours, SB3, the bare-update limit, test results (median of repeats)."""
    ours, sb3, limits = [], [], []
    for seed in range(args.repeats):
        # The limit is measured right before and after each run (other load on a shared machine
        # moves both together); its mean is that run's limit.
        before = bare_update_limit(data, args.batch_size)
        ours.append(run_ours(data, seed, env_steps, args.batch_size, args.n_envs))
        after = bare_update_limit(data, args.batch_size)
        limits.append((before + after) / 2 / REPLAY_RATIO)
        print(f"  seed {seed}: ours {ours[-1]['steps_per_s']:,.0f} env steps/s "
              f"({ours[-1]['wall_steps_per_s']:,.0f} with validation every episode), "
              f"limit {limits[-1]:,.0f}", flush=True)
        if not args.skip_sb3:
            sb3.append(run_sb3(data, seed, ours[-1]["env_steps"]))
            print(f"  seed {seed}: SB3  {sb3[-1]['steps_per_s']:,.0f} env steps/s", flush=True)

    def med(rows: list[dict[str, Any]], *key: str) -> float:
        values = []
        for r in rows:
            v: Any = r
            for k in key:
                v = v[k]
            values.append(float(v))
        return statistics.median(values)

    o, lim = med(ours, "steps_per_s"), statistics.median(limits)
    lim64 = bare_update_limit(data, 64) / REPLAY_RATIO
    a, z = int(data.test.start), int(data.test.stop)
    hold = float(np.log(data.close[z - 1] / data.close[a]))
    print(f"\nmedian of {args.repeats} (CPU, 1 torch thread, batch {args.batch_size}, "
          f"{args.n_envs} envs):")
    print(f"  ours (dql 64-64, vectorised)  {o:>10,.0f} env steps/s")
    if sb3:
        s = med(sb3, "steps_per_s")
        print(f"  SB3 DQN (64-64, gym wrapper)  {s:>10,.0f} env steps/s")
        print(f"  ratio ours / SB3              {o / s:>10.1f}x   (target >= 10x)")
    print(f"  limit: bare updates           {lim:>10,.0f} env steps/s "
          f"({lim * REPLAY_RATIO:,.0f} samples/s / {REPLAY_RATIO:g})")
    print(f"  ours / limit                  {o / lim:>10.2f}    (target >= 0.5)")
    print(f"  (limit at SB3's batch of 64:  {lim64:>10,.0f} env steps/s: the speed is batching)")
    print(f"  test split after {ours[0]['env_steps']:,} env steps (median log return, Sharpe):")
    print(f"    ours  {med(ours, 'test', 'log_return'):+.4f}  {med(ours, 'test', 'sharpe'):+.2f}"
          f"   per seed: " + ", ".join(f"{r['test']['log_return']:+.3f}" for r in ours))
    if sb3:
        print(f"    SB3   {med(sb3, 'test', 'log_return'):+.4f}  {med(sb3, 'test', 'sharpe'):+.2f}"
              f"   per seed: " + ", ".join(f"{r['test']['log_return']:+.3f}" for r in sb3))
    print(f"    buy and hold {hold:+.4f}")


if __name__ == "__main__":
    sys.exit(main())
