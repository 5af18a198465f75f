"""The DQN family: Q-networks, the learner (one gradient update at a time), the epsilon schedule.

Agent types (``--agent_type``; defaults in :data:`engine.config.AGENT_DEFAULTS`):

- ``dql``: DQN (Mnih et al. 2015): MLP 128-128 over the flattened window, 1-step targets from a
  target network.
- ``custom``: Double DQN (van Hasselt et al. 2016) + dueling heads (Wang et al. 2016) + 3-step
  returns, MLP 256-128-64; prioritised replay with ``--prioritized``.
- ``memory``: a recurrent Q-network (DRQN-style, Hausknecht & Stone 2015): a GRU reads the
  window's rows oldest first and its last hidden state feeds an MLP head; Double DQN targets.
  The window is the memory: each observation is scored on its own, so replay stays plain.

Every agent: Huber loss (smooth L1, delta 1) weighted by the replay's importance weights,
gradient-norm clipping, Adam, and a target network updated every ``target_update_freq`` gradient
updates, hard (``tau = 1``) or by Polyak averaging (``tau < 1``). Epsilon is scheduled on
environment steps (:func:`epsilon_at`), never on gradient updates (the predecessor's bug).

No host sync in acting or updating (nothing reads a tensor's value on the host; a GPU runs a
step's kernels back to back). ``--compile`` (auto: on for CUDA only) runs the loss (forward and
backward) through ``torch.compile``: on this repository's 2-core CPU machine a first compile took
~24 s and the compiled update ran 2x slower than eager (3.7 vs 1.7 ms at batch 1,024), so the CPU
stays eager; a compile that fails becomes a ``warning`` and eager. CUDA graphs
(``mode="reduce-overhead"``) are not used: unmeasured without a GPU.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from engine.config import Config
from engine.replay import Batch


def _mlp(n_in: int, hidden: tuple[int, ...], dropout: float = 0.0
         ) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(n_in, h), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        n_in = h
    return nn.Sequential(*layers), n_in


class QHead(nn.Module):
    """Q-values from features: one linear layer, or dueling value + advantage streams."""

    def __init__(self, n_in: int, n_actions: int, dueling: bool) -> None:
        super().__init__()
        self.dueling = dueling
        if dueling:
            self.value = nn.Linear(n_in, 1)
            self.advantage = nn.Linear(n_in, n_actions)
        else:
            self.q = nn.Linear(n_in, n_actions)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if not self.dueling:
            return self.q(z)
        adv = self.advantage(z)
        return self.value(z) + adv - adv.mean(dim=1, keepdim=True)


class MLPQNet(nn.Module):
    """Q(s, .) from the flattened ``(window, F + 1)`` observation."""

    def __init__(self, obs_shape: tuple[int, ...], n_actions: int, hidden: tuple[int, ...],
                 dueling: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.body, width = _mlp(math.prod(obs_shape), tuple(hidden), dropout)
        self.head = QHead(width, n_actions, dueling)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(obs.flatten(1)))


class GRUQNet(nn.Module):
    """Q(s, .) from a GRU over the window's rows (oldest first), then an MLP head."""

    def __init__(self, obs_shape: tuple[int, ...], n_actions: int, gru_hidden: int,
                 hidden: tuple[int, ...], dueling: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        if len(obs_shape) != 2:
            raise ValueError(f"the memory agent needs (window, features) observations, got "
                             f"{obs_shape}")
        self.gru = nn.GRU(obs_shape[1], gru_hidden, batch_first=True)
        self.body, width = _mlp(gru_hidden, tuple(hidden), dropout)
        self.head = QHead(width, n_actions, dueling)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        _, h = self.gru(obs)  # h: (1, B, gru_hidden), the state after the newest row
        return self.head(self.body(h[-1]))


def build_qnet(cfg: Config, obs_shape: tuple[int, ...], n_actions: int) -> nn.Module:
    """The Q-network of a resolved config's agent type."""
    hidden = tuple(cfg.hidden_sizes or ())
    drop = float(cfg.dropout or 0.0)
    if cfg.agent_type == "memory":
        return GRUQNet(obs_shape, n_actions, cfg.gru_hidden, hidden, bool(cfg.dueling), drop)
    return MLPQNet(obs_shape, n_actions, hidden, bool(cfg.dueling), drop)


class EnsembleQNet(nn.Module):
    """The mean Q-values of several networks (an ensemble of seeds): it acts on their consensus,
    which is steadier than any one of them."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(obs) for m in self.members]).mean(dim=0)


def greedy_holding(q: torch.Tensor, margin: float) -> torch.Tensor:
    """The greedy actions of Q-values ``q`` (B, A), except that the last action (the fully long
    position, buy-and-hold's) is taken unless another action's value beats it by more than
    ``margin`` (``--hold_margin``, in the reward's units: a bar's return standard deviation for
    the profit reward). 0 is the plain argmax. Torch ops only: no host sync on a device."""
    best = q.argmax(dim=1)
    if margin <= 0:
        return best
    keep = q[:, -1] >= q.max(dim=1).values - margin
    return torch.where(keep, torch.full_like(best, q.shape[1] - 1), best)


def epsilon_at(env_step: int, total_env_steps: int, cfg: Config) -> float:
    """Exploration rate after ``env_step`` environment steps of ``total_env_steps``.

    The schedule spans the first ``eps_fraction`` of all env steps; linear: straight from
    ``eps_start`` to ``eps_end``; exponential: ``eps_end + (eps_start - eps_end) * 0.01 **
    progress`` (1% of the gap left at the end of the span), then ``eps_end``.
    """
    span = max(1.0, cfg.eps_fraction * total_env_steps)
    progress = min(1.0, env_step / span)
    if cfg.eps_schedule == "exponential":
        if progress >= 1.0:
            return cfg.eps_end
        return cfg.eps_end + (cfg.eps_start - cfg.eps_end) * 0.01 ** progress
    return cfg.eps_start + progress * (cfg.eps_end - cfg.eps_start)


class Adam:
    """Adam (Kingma & Ba 2015) over a fixed list of parameters, as multi-tensor (foreach) ops.

    The same update as ``torch.optim.Adam`` (no amsgrad; ``weight_decay`` decoupled as AdamW). Written out because
    constructing any ``torch.optim`` optimiser imports ``torch._dynamo``: about 4 s per process
    on a small machine, paid again by every tuning worker and every resumed run; and one fused
    step here has less Python overhead per update than the generic optimiser.
    """

    def __init__(self, params: list[nn.Parameter], lr: float, betas: tuple[float, float] = (
            0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.betas, self.eps = float(lr), betas, float(eps)
        self.weight_decay = float(weight_decay)
        self.t = 0
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Scale the gradients so that their global L2 norm is at most ``max_norm`` (as
        ``torch.nn.utils.clip_grad_norm_``, in four multi-tensor ops); returns the norm."""
        grads = [p.grad for p in self.params if p.grad is not None]
        total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        torch._foreach_mul_(grads, torch.clamp(max_norm / (total + 1e-6), max=1.0))
        return total

    @torch.no_grad()
    def step(self) -> None:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        b1, b2 = self.betas
        self.t += 1
        if self.weight_decay > 0:  # decoupled, as AdamW
            torch._foreach_mul_(self.params, 1.0 - self.lr * self.weight_decay)
        torch._foreach_lerp_(self.exp_avg, grads, 1.0 - b1)
        torch._foreach_mul_(self.exp_avg_sq, b2)
        torch._foreach_addcmul_(self.exp_avg_sq, grads, grads, 1.0 - b2)
        bias1 = 1.0 - b1 ** self.t
        bias2_sqrt = math.sqrt(1.0 - b2 ** self.t)
        denom = torch._foreach_sqrt(self.exp_avg_sq)
        torch._foreach_div_(denom, bias2_sqrt)
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(self.params, self.exp_avg, denom, -self.lr / bias1)

    def state_dict(self) -> dict[str, Any]:
        return {"t": self.t, "exp_avg": [m.detach().cpu().clone() for m in self.exp_avg],
                "exp_avg_sq": [v.detach().cpu().clone() for v in self.exp_avg_sq],
                "lr": self.lr, "betas": list(self.betas), "eps": self.eps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["exp_avg"]) != len(self.params):
            raise ValueError("optimizer state does not match the network's parameters")
        self.t = int(state["t"])
        for dst, src in zip(self.exp_avg + self.exp_avg_sq, state["exp_avg"] +
                            state["exp_avg_sq"], strict=True):
            dst.copy_(src)


class DQNAgent:
    """Online and target Q-networks, their optimiser, and the update rule of the config."""

    def __init__(self, cfg: Config, obs_shape: tuple[int, ...], n_actions: int,
                 device: str | torch.device, *, warn: Callable[[str], None] | None = None
                 ) -> None:
        if cfg.hidden_sizes is None or cfg.n_step is None:
            cfg = cfg.resolved()
        self.cfg = cfg
        self.device = torch.device(device)
        self.n_actions = int(n_actions)
        self.online = build_qnet(cfg, obs_shape, n_actions).to(self.device)
        self.target = copy.deepcopy(self.online)
        self.target.requires_grad_(False)
        self.target.eval()  # no dropout in the targets
        self.optimizer = Adam(list(self.online.parameters()), lr=cfg.lr,
                              weight_decay=float(cfg.weight_decay or 0.0))
        self.double = bool(cfg.double_dqn)
        self.updates = 0  # gradient updates done
        self.warn = warn or (lambda _m: None)
        mode = getattr(cfg, "compile", "auto") or "auto"
        self.compiled = mode == "on" or (mode == "auto" and self.device.type == "cuda")
        self._loss_fn: Callable[..., tuple[torch.Tensor, torch.Tensor]] = self._loss
        if self.compiled:
            self._loss_fn = torch.compile(self._loss, dynamic=False)

    # -- acting ----------------------------------------------------------------------------
    @torch.no_grad()
    def greedy(self, obs: torch.Tensor) -> torch.Tensor:
        """argmax_a Q(obs, a) of the online network (B,) int64."""
        return self.online(obs).argmax(dim=1)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, epsilon: float, generator: torch.Generator) -> torch.Tensor:
        """Epsilon-greedy actions for a batch; draws the same random numbers whatever epsilon."""
        n = obs.shape[0]
        explore = torch.rand(n, device=self.device, generator=generator) < epsilon
        random_actions = torch.randint(self.n_actions, (n,), device=self.device,
                                       generator=generator)
        if epsilon >= 1.0:
            return random_actions
        return torch.where(explore, random_actions, self.greedy(obs))

    # -- learning ----------------------------------------------------------------------------
    def _loss(self, obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor,
              next_obs: torch.Tensor, discounts: torch.Tensor, weights: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """The weighted Huber loss of a batch and its |TD errors| (what ``compile`` captures)."""
        q = self.online(obs).gather(1, actions.unsqueeze(1)).squeeze(1)
        with torch.no_grad():
            next_q_target = self.target(next_obs)
            if self.double:
                best = self.online(next_obs).argmax(dim=1, keepdim=True)
                next_q = next_q_target.gather(1, best).squeeze(1)
            else:
                next_q = next_q_target.max(dim=1).values
            target = rewards + discounts * next_q
        td = (target - q).detach().abs()
        loss = (weights * F.smooth_l1_loss(q, target, reduction="none")).mean()
        return loss, td

    def update(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """One gradient update on ``batch``; returns (loss, |TD error| per sample), detached.

        No host sync: clipping and Adam stay on the device (the step count is a host int).
        With ``compile`` the loss (forward, and through autograd its backward) runs compiled;
        if compiling fails, a warning and eager from then on.
        """
        args = (batch.obs, batch.actions, batch.rewards, batch.next_obs, batch.discounts,
                batch.weights)
        try:
            loss, td = self._loss_fn(*args)
        except Exception as exc:  # a compiler error: eager, as without --compile
            if self._loss_fn == self._loss:
                raise
            self._loss_fn = self._loss
            self.compiled = False
            self.warn(f"torch.compile of the update failed, running eager: "
                      f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            loss, td = self._loss(*args)
        self.optimizer.zero_grad()
        loss.backward()
        if self.cfg.max_grad_norm > 0:
            self.optimizer.clip_grad_norm_(self.cfg.max_grad_norm)
        self.optimizer.step()
        self.updates += 1
        if self.updates % self.cfg.target_update_freq == 0:
            self.update_target()
        return loss.detach(), td

    @torch.no_grad()
    def update_target(self) -> None:
        """Hard copy (tau = 1) or Polyak step toward the online network."""
        if self.cfg.tau >= 1.0:
            self.target.load_state_dict(self.online.state_dict())
            return
        for t, o in zip(self.target.parameters(), self.online.parameters(), strict=True):
            t.lerp_(o, self.cfg.tau)
        for tb, ob in zip(self.target.buffers(), self.online.buffers(), strict=True):
            tb.copy_(ob)

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"online": self.online.state_dict(), "target": self.target.state_dict(),
                "optimizer": self.optimizer.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.online.load_state_dict(state["online"])
        self.target.load_state_dict(state["target"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.updates = int(state["updates"])


def weights_copy(net: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of a network's weights (for best-so-far selection)."""
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def average_into(avg: dict[str, torch.Tensor] | None, net: nn.Module,
                 n: int) -> dict[str, torch.Tensor]:
    """The running mean of weights with ``net``'s as its ``n``-th member (n = 1 starts it):
    avg + (w - avg) / n for floating-point tensors; other buffers take the latest value."""
    if avg is None or n <= 1:
        return weights_copy(net)
    for key, value in net.state_dict().items():
        mean = avg[key]
        if mean.is_floating_point():
            mean.add_(value.detach() - mean, alpha=1.0 / n)
        else:
            mean.copy_(value.detach())
    return avg
