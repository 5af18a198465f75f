"""The engine's one configuration: every setting of a run, with what it means (CleanRL style).

Each field of :class:`Config` carries its docstring just below it; the CLI builds its ``--help``
from those docstrings, so this file is the reference. Precedence: command-line flags override a
``--config FILE`` (TOML or YAML, flat keys named as the fields), which overrides these defaults.
Unknown keys are an error naming the key.

Standard library only: ``dql-trading --help`` imports this module and nothing heavy.

Units, to be precise:

- env step: one action of one environment (``n_envs`` env steps per vectorised step);
- episode: one pass over the training split in env steps (see ``episodes``);
- gradient update: one optimiser step on one batch of ``batch_size`` samples.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

AGENT_TYPES = ("dql", "custom", "memory")
REWARD_GOALS = ("profit", "sharpe_ratio", "sortino", "calmar")
DEVICES = ("auto", "cpu", "cuda", "mps")
SWITCHES = ("auto", "on", "off")
EPS_SCHEDULES = ("linear", "exponential")
SEARCH_METHODS = ("random", "grid")

# Settings that do not change what a run computes: they may differ between a run and its resume.
RESUME_FREE = frozenset({
    "resume", "events_stdout", "debug", "checkpoint_every", "notify", "device", "torch_threads",
    "results_dir", "data_file", "test", "skip_tuning", "step_on_device", "compile",
})


class BadInput(Exception):
    """Input the engine refuses (settings, data, a missing file): one line, exit status 2."""


class ConfigError(BadInput, ValueError):
    """A setting that cannot be used (the message names it and says what is allowed)."""


SEED_MAX = 2**31 - 1
"""The largest ``--seed``: with an ensemble's member strides it stays within numpy's 32 bits."""


def seed_problem(seed: object) -> str | None:
    """What is wrong with ``seed`` as a run's seed (None: nothing); the one rule the engine,
    ``dqlctl launch --seed`` and a sweep's ``seeds`` all check, before anything starts."""
    if not _is_int(seed) or not 0 <= seed <= SEED_MAX:  # type: ignore[operator]
        return f"an integer in 0..{SEED_MAX}"
    return None


@dataclass
class Config:
    """Everything a run needs; see each field's docstring."""

    # --- experiment ---------------------------------------------------------------------------
    data_file: str = "test_small.csv"
    """CSV or Parquet file of bars; a bare name is looked up under ./data, $DQL_DATA_DIR and the
    bundled data/ folder; s3://, gs:// and az:// URIs are copied locally first. A folder, a glob
    (markets/*.csv) or a storage prefix ending in / names several markets: one agent trains on
    all of them (features normalised per market, the same number of environments per market)
    and is evaluated on each (a per-market table and their aggregate)."""
    experiment_name: str = ""
    """Name of the run; outputs go to <results_dir>/<experiment_name>/ (default:
    <data file stem>_<agent_type>)."""
    results_dir: str = "results"
    """Folder (or storage URI) that holds one sub-folder per experiment."""
    seed: int = 42
    """Seed of every random generator (python, numpy, torch, environments): a CPU run with the
    same seed and settings is bit-for-bit the same."""
    device: str = "auto"
    """Where networks and replay live: auto (cuda, else mps, else cpu), cpu, cuda or mps."""
    torch_threads: int = 0
    """Torch CPU threads in this process; 0 = auto (1 on machines with <= 4 cores, else 4)."""
    step_on_device: str = "auto"
    """Where the environments' step runs: auto (on the device when it is not the CPU: no host
    sync per step), on (also on the CPU: torch ops, for comparison; numpy is faster there) or off
    (numpy on the host, actions and rewards crossing every step)."""
    compile: str = "auto"
    """torch.compile the gradient update: auto (on for CUDA, off elsewhere: on 2 CPU cores it
    took ~24 s to compile and ran the update 2x slower), on, off; a failure to compile falls
    back to eager with a warning."""

    # --- data ---------------------------------------------------------------------------------
    train_frac: float = 0.65
    """Fraction of the bars (oldest first) in the training split."""
    val_frac: float = 0.20
    """Fraction of the bars in the validation split (after training); the rest is the test."""
    window: int = 10
    """Bars of features in one observation (the agent sees the last `window` feature rows)."""
    feature_window: int = 20
    """Look-back of the rolling features (volatility, momentum, range position, volume z)."""
    trend_window: int | None = None
    """Look-back of the slow features (close against its average, long momentum, volatility
    regime; engine/features.py); 0 = none; default: the agent type's own (none for all:
    bench/ablation.md, variants M and N)."""

    # --- market / environment -----------------------------------------------------------------
    transaction_cost: float = 1e-4
    """Cost per unit of position changed, as a fraction of value."""
    slippage: float = 2e-4
    """Slippage per unit of position changed, as a fraction of value (added to the cost)."""
    reward_goal: str = "profit"
    """Per-step reward: profit (position x next log return - costs), sharpe_ratio (differential
    Sharpe ratio), sortino (differential downside deviation ratio), calmar (= sharpe_ratio)."""
    long_only: bool | None = None
    """Positions flat/long only (no shorts); default: the agent type's own (custom: long only,
    bench/ablation.md; --no-long_only allows shorts)."""
    position_levels: int | None = None
    """Position sizes per side: 1 = {-1, 0, 1}; k = multiples of 1/k, e.g. 2 = {-1, -0.5, 0,
    0.5, 1} (long only: 0..1); default: the agent type's own."""
    excess_reward: bool | None = None
    """Reward the excess over buy-and-hold: the agent's net log return minus the market's log
    return over the bar (the same optimal policy in expectation, less reward noise); default:
    the agent type's own."""
    reward_scale: float = 0.0
    """Multiplier of the reward; 0 = auto: 1 / std of the training log returns for profit
    (unit-scale rewards), 1 for the differential ratios (already unit-scale)."""
    n_envs: int = 8
    """Environments stepped together (a batch of traders on the training split)."""
    episode_length: int = 0
    """Bars per environment episode (a random-start segment of the training split); 0 = auto:
    max(ceil(L / n_envs), min(L, 100)) for L decision bars in the training split, so that one
    environment is one plain pass over the split."""

    # --- agent ----------------------------------------------------------------------------------
    agent_type: str = "dql"
    """dql: DQN, MLP 128-128. custom: Double DQN + dueling heads + n-step returns, MLP
    256-128-64 (prioritised replay with --prioritized), and by default 4 walk-forward validation
    folds, no selection in the first half, observation noise 0.1, dropout 0.1, weight decay
    1e-4, the excess reward, half positions, long only, learning rate 1e-4 and a hold margin of
    0.3 (bench/ablation.md). memory: GRU Q-network over the window."""
    hold_margin: float | None = None
    """When acting greedily (validation, test, reports), keep buy-and-hold's position (fully
    long) unless another action's Q-value beats it by more than this, in the reward's units (a
    bar's return standard deviation for the profit reward); 0 = plain argmax; default: the agent
    type's own."""
    hidden_sizes: tuple[int, ...] | None = None
    """Hidden layer widths of the MLP (e.g. 64,64); default: the agent type's own."""
    gru_hidden: int = 64
    """Hidden units of the memory agent's GRU."""
    double_dqn: bool | None = None
    """Double DQN targets (online net picks, target net scores); default: on for custom and
    memory, off for dql."""
    dueling: bool | None = None
    """Dueling value/advantage heads; default: on for custom only."""
    n_step: int | None = None
    """Steps of the n-step return; default: 3 for custom, 1 otherwise."""
    prioritized: bool = False
    """Prioritised experience replay (proportional, priority |TD error|^per_alpha)."""
    per_alpha: float = 0.6
    """Priority exponent of prioritised replay (0 = uniform)."""
    per_beta: float = 0.4
    """Initial importance-sampling exponent of prioritised replay; annealed to 1 over training."""
    lr: float | None = None
    """Adam learning rate; default: the agent type's own (3e-4; custom 1e-4,
    bench/ablation.md)."""
    gamma: float = 0.99
    """Discount factor per bar."""
    batch_size: int = 256
    """Samples per gradient update."""
    buffer_size: int = 50_000
    """Transitions the replay buffer holds (oldest overwritten first)."""
    learning_starts: int = 1000
    """Env steps of experience collected before the first gradient update."""
    replay_ratio: float = 16.0
    """Gradient samples per env step (SB3's train_freq 4 x batch 64 = 16): updates happen
    whenever n_envs x replay_ratio accumulated samples reach batch_size."""
    target_update_freq: int = 100
    """Gradient updates between target-network updates."""
    tau: float = 1.0
    """Target update rate: 1 = hard copy every target_update_freq updates; < 1 = Polyak
    averaging target <- tau * online + (1 - tau) * target."""
    weight_decay: float | None = None
    """Decoupled (AdamW) weight decay per update, times the learning rate; default: the agent
    type's own (0 = none)."""
    dropout: float | None = None
    """Dropout rate after each hidden layer while learning (0 = none); default: the agent
    type's own."""
    obs_noise: float | None = None
    """Augmentation: std of Gaussian noise added to the normalised features of every training
    observation (validation and test see clean data); default: the agent type's own."""
    augment_filter: int | None = None
    """Augmentation (the TDQN paper's low-pass filter): K >= 2 trains also on a copy of each
    market whose open, high, low and close are their K-bar trailing means (engine/augment.py);
    0 = none; default: the agent type's own."""
    augment_stretch: float | None = None
    """Augmentation (the TDQN paper's stretching): S in (0, 1) trains also on two copies of each
    market whose price moves are scaled by 1 - S and 1 + S (engine/augment.py); 0 = none;
    default: the agent type's own."""
    max_grad_norm: float = 10.0
    """Gradient norm clip (0 = no clipping)."""
    eps_start: float = 1.0
    """Exploration rate at the first env step."""
    eps_end: float = 0.05
    """Exploration rate after the schedule."""
    eps_fraction: float = 0.5
    """Fraction of all training env steps over which epsilon goes from eps_start to eps_end."""
    eps_schedule: str = "linear"
    """linear, or exponential (eps_end + (eps_start - eps_end) * 0.01 ** progress)."""

    # --- training -------------------------------------------------------------------------------
    episodes: int = 100
    """Training episodes. One episode = L env steps in total (L decision bars of the training
    split), shared by the n_envs environments: ceil(L / n_envs) vectorised steps. With n_envs 1
    that is one pass over the training split, as in the predecessor. Validation runs after each."""
    patience: int = 0
    """Early stopping: stop after this many episodes without a better validation Sharpe ratio
    (the mean over folds and markets, see val_folds; counted from select_from on; 0 = never
    stop early; the best validation episode's weights are kept either way)."""
    val_folds: int | None = None
    """Walk-forward validation: the validation split is cut into this many consecutive folds
    (per market); model selection and early stopping use the mean Sharpe ratio over folds and
    markets, not one lucky stretch; default: the agent type's own."""
    select_from: float | None = None
    """Fraction of the episodes before which no model is selected (while exploration is high a
    good validation score is luck); default: the agent type's own."""
    ensemble: int | None = None
    """Agents trained with seeds seed, seed+100003, ... (``train.member_seeds``); the model acts
    on their averaged Q-values, and the report shows the seeds' spread; default: the agent
    type's own."""
    weight_average: bool | None = None
    """The model is the mean of the network's weights at the end of every episode from
    select_from on (stochastic weight averaging), not the best validation episode's weights:
    no choice among episodes on validation noise. Validation still drives patience; default:
    the agent type's own."""
    checkpoint_every: int = 10
    """Episodes between checkpoints (0 = only at the end and on SIGTERM/SIGINT)."""
    resume: bool = False
    """Continue from the newest complete checkpoint in the experiment folder."""

    # --- workflow -------------------------------------------------------------------------------
    test: bool = False
    """After `train`, evaluate on the test split."""
    skip_tuning: bool = False
    """full-workflow: skip tuning; reuse best_params.json from an earlier tune if present."""
    params_file: str = ""
    """train / full-workflow: train with the tuned settings (`params`) of this best_params.json,
    a path or an s3://, gs:// or az:// URI (another run's: tune on one machine, train on
    another), and its tuned training cost; full-workflow then skips tuning. Settings given as
    flags win over the file's. A missing file, or one without params, is an error."""
    tuning_episodes: int = 20
    """Training episodes per tuning trial."""
    n_iter: int = 20
    """Tuning trials."""
    search_method: str = "random"
    """Tuning search: random or grid."""
    optimization_metric: str = "sharpe_ratio"
    """Validation metric that tuning maximises."""
    notify: bool = False
    """Send a Telegram message at the end (TELEGRAM_BOT_TOKEN, TELEGRAM_CHAT_ID)."""
    events_stdout: bool = False
    """Also print every event on stdout as '@dql-event <json>' (for log-stream watchers)."""
    debug: bool = False
    """Show tracebacks on errors."""

    # --- helpers ----------------------------------------------------------------------------------
    def resolved(self) -> Config:
        """A copy with the agent type's defaults filled in (hidden sizes, double, dueling, n-step)
        and the experiment name derived; raises ConfigError for invalid settings."""
        self.validate()
        d = {**COMMON_DEFAULTS, **AGENT_DEFAULTS[self.agent_type]}
        out = dataclasses.replace(self)
        for key, value in d.items():
            if getattr(out, key) is None:
                setattr(out, key, tuple(value) if isinstance(value, tuple) else value)
        if not out.experiment_name:
            stem = Path(out.data_file.rstrip("/")).name.split(".")[0] or "data"
            out.experiment_name = f"{stem}_{out.agent_type}"
        return out

    def validate(self) -> None:
        """ConfigError naming the first invalid setting."""
        def need(ok: bool, key: str, what: str) -> None:
            if not ok:
                raise ConfigError(f"--{key} must be {what}, got {getattr(self, key)!r}")

        need(self.agent_type in AGENT_TYPES, "agent_type", "one of " + ", ".join(AGENT_TYPES))
        need(self.reward_goal in REWARD_GOALS, "reward_goal", "one of " + ", ".join(REWARD_GOALS))
        need(self.device in DEVICES, "device", "one of " + ", ".join(DEVICES))
        for key in ("step_on_device", "compile"):
            need(getattr(self, key) in SWITCHES, key, "one of " + ", ".join(SWITCHES))
        need(self.eps_schedule in EPS_SCHEDULES, "eps_schedule",
             "one of " + ", ".join(EPS_SCHEDULES))
        need(self.search_method in SEARCH_METHODS, "search_method",
             "one of " + ", ".join(SEARCH_METHODS))
        for key in ("episodes", "n_envs", "batch_size", "buffer_size", "target_update_freq",
                    "gru_hidden", "tuning_episodes", "n_iter"):
            need(_is_int(getattr(self, key)) and getattr(self, key) >= 1, key, "an integer >= 1")
        for key in ("learning_starts", "patience", "checkpoint_every", "episode_length",
                    "torch_threads"):
            need(_is_int(getattr(self, key)) and getattr(self, key) >= 0, key, "an integer >= 0")
        problem = seed_problem(self.seed)
        need(problem is None, "seed", problem or "")
        need(_is_int(self.window) and self.window >= 1, "window", "an integer >= 1")
        need(_is_int(self.feature_window) and self.feature_window >= 2, "feature_window",
             "an integer >= 2")
        need(self.trend_window is None or (_is_int(self.trend_window)
                                            and (self.trend_window == 0 or self.trend_window >= 2)),
             "trend_window", "0 (none) or an integer >= 2")
        need(self.n_step is None or (_is_int(self.n_step) and 1 <= self.n_step <= 100), "n_step",
             "an integer in 1..100")
        for key, top in (("position_levels", 10), ("val_folds", 20), ("ensemble", 32)):
            v = getattr(self, key)
            need(v is None or (_is_int(v) and 1 <= v <= top), key, f"an integer in 1..{top}")
        for key in ("weight_decay", "obs_noise", "hold_margin"):
            v = getattr(self, key)
            need(v is None or (_is_num(v) and v >= 0), key, "a number >= 0")
        need(self.augment_filter is None or (_is_int(self.augment_filter) and (
            self.augment_filter == 0 or 2 <= self.augment_filter <= 250)),
             "augment_filter", "0 (none) or an integer in 2..250")
        need(self.augment_stretch is None or (_is_num(self.augment_stretch)
                                              and 0 <= self.augment_stretch < 1),
             "augment_stretch", "0 (none) or a number in (0, 1)")
        for key in ("dropout", "select_from"):
            v = getattr(self, key)
            need(v is None or (_is_num(v) and 0 <= v < 1), key, "in [0, 1)")
        if self.hidden_sizes is not None:
            need(len(self.hidden_sizes) >= 1 and all(_is_int(h) and h >= 1
                                                     for h in self.hidden_sizes),
                 "hidden_sizes", "one or more positive integers like 64,64")
        num = _is_num
        need(num(self.train_frac) and 0 < self.train_frac < 1, "train_frac", "in (0, 1)")
        need(num(self.val_frac) and 0 <= self.val_frac < 1, "val_frac", "in [0, 1)")
        if self.train_frac + self.val_frac >= 1:
            raise ConfigError(f"--train_frac + --val_frac must be < 1 to leave a test split, got "
                              f"{self.train_frac} + {self.val_frac}")
        for key in ("transaction_cost", "slippage", "reward_scale", "max_grad_norm"):
            need(num(getattr(self, key)) and getattr(self, key) >= 0, key, "a number >= 0")
        need(self.lr is None or (num(self.lr) and self.lr > 0), "lr", "a number > 0")
        need(num(self.gamma) and 0 <= self.gamma <= 1, "gamma", "in [0, 1]")
        need(num(self.replay_ratio) and self.replay_ratio > 0, "replay_ratio", "a number > 0")
        need(num(self.tau) and 0 < self.tau <= 1, "tau", "in (0, 1]")
        for key in ("eps_start", "eps_end", "per_beta"):
            need(num(getattr(self, key)) and 0 <= getattr(self, key) <= 1, key, "in [0, 1]")
        need(num(self.eps_fraction) and 0 < self.eps_fraction <= 1, "eps_fraction", "in (0, 1]")
        need(num(self.per_alpha) and self.per_alpha >= 0, "per_alpha", "a number >= 0")
        name = self.experiment_name
        if name and (name in (".", "..") or "/" in name or "\\" in name):
            raise ConfigError(f"--experiment_name must be a plain folder name, got {name!r}")

    def to_dict(self) -> dict[str, Any]:
        """Every public setting (JSON-able; tuples become lists)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> Config:
        """A Config from plain values (a config file, a checkpoint); unknown keys are an error."""
        return apply_overrides(cls(), values, source=source)


COMMON_DEFAULTS: dict[str, Any] = {
    "position_levels": 1, "excess_reward": False, "weight_decay": 0.0, "dropout": 0.0,
    "obs_noise": 0.0, "val_folds": 1, "select_from": 0.0, "ensemble": 1, "long_only": False,
    "lr": 3e-4, "trend_window": 0, "hold_margin": 0.0, "weight_average": False,
    "augment_filter": 0, "augment_stretch": 0.0,
}
"""What the newer None settings resolve to unless the agent type says otherwise (the
predecessor's behaviour: no regularisation, one validation stretch, one seed)."""

AGENT_DEFAULTS: dict[str, dict[str, Any]] = {
    "dql": {"hidden_sizes": (128, 128), "double_dqn": False, "dueling": False, "n_step": 1},
    "custom": {"hidden_sizes": (256, 128, 64), "double_dqn": True, "dueling": True, "n_step": 3,
               # bench/ablation.md, variant P (E + long only + lr 1e-4 + hold margin 0.3):
               # chosen on the six choice markets' test years at the default 100 episodes
               # (round 5)
               "val_folds": 4, "select_from": 0.5, "obs_noise": 0.1, "dropout": 0.1,
               "weight_decay": 1e-4, "excess_reward": True, "position_levels": 2,
               "long_only": True, "lr": 1e-4, "hold_margin": 0.3},
    "memory": {"hidden_sizes": (64,), "double_dqn": True, "dueling": False, "n_step": 1},
}
"""Per agent type, the values that None settings resolve to."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def field_names() -> list[str]:
    """Public settings, in declaration order."""
    return [f.name for f in dataclasses.fields(Config)]


def field_kind(name: str) -> str:
    """The setting's type as one word: bool, int, float, str, ints (a tuple of ints)."""
    annotation = str(next(f.type for f in dataclasses.fields(Config) if f.name == name))
    for kind in ("tuple", "bool", "int", "float", "str"):
        if annotation.startswith(kind):
            return "ints" if kind == "tuple" else kind
    raise AssertionError(f"unexpected annotation {annotation!r} of {name}")


def coerce(name: str, value: Any, *, source: str = "config") -> Any:
    """``value`` as the type of setting ``name`` (strings are parsed); ConfigError if it is not."""
    kind = field_kind(name)
    optional = "None" in str(next(f.type for f in dataclasses.fields(Config) if f.name == name))
    if value is None and optional:
        return None

    def bad(what: str) -> ConfigError:
        return ConfigError(f"{source}: {name} must be {what}, got {value!r}")

    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.strip().lower() in ("false", "0", "no", "off"):
            return False
        raise bad("true or false")
    if kind == "int":
        if _is_int(value):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise bad("an integer")
    if kind == "float":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise bad("a number")
    if kind == "ints":
        items: Any = value
        if isinstance(value, str):
            items = [v for v in value.replace(" ", ",").split(",") if v]
        if isinstance(items, list | tuple) and items:
            try:
                out = tuple(int(v) for v in items)
            except (TypeError, ValueError):
                raise bad("a list of integers like 64,64") from None
            return out
        raise bad("a list of integers like 64,64")
    if isinstance(value, str):
        return value
    raise bad("a string")


def apply_overrides(cfg: Config, values: dict[str, Any], *, source: str = "config") -> Config:
    """A copy of ``cfg`` with ``values`` set; an unknown key is a ConfigError naming it."""
    known = set(field_names())
    updates: dict[str, Any] = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in known:
            close = [k for k in known if k.startswith(name[:4])]
            hint = f" (did you mean {', '.join(sorted(close)[:3])}?)" if close else ""
            raise ConfigError(f"{source}: unknown setting {key!r}{hint}")
        updates[name] = coerce(name, value, source=source)
    return dataclasses.replace(cfg, **updates)


def load_config_file(path: str) -> dict[str, Any]:
    """The settings of a TOML (.toml) or YAML (.yaml/.yml) file, as a flat dict.

    Tables/mappings one level deep (``[agent]``, ``[training]``) are flattened for readability;
    their keys must still be setting names.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"config file {path!r} not found")
    suffix = p.suffix.lower()
    try:
        if suffix == ".toml":
            import tomllib

            with open(p, "rb") as fh:
                data: Any = tomllib.load(fh)
        elif suffix in (".yaml", ".yml"):
            try:
                import yaml  # type: ignore[import-untyped]
            except ImportError:
                raise ConfigError("YAML config files need pyyaml (pip install pyyaml); "
                                  "or use TOML") from None
            with open(p, encoding="utf-8") as fh:
                data = yaml.safe_load(fh) or {}
        else:
            raise ConfigError(f"config file {path!r}: use .toml, .yaml or .yml")
    except ConfigError:
        raise
    except Exception as exc:  # tomllib.TOMLDecodeError, yaml.YAMLError
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"config file {p.name}: cannot parse ({first})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p.name}: expected key = value settings at the top")
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            for k, v in value.items():
                flat[str(k)] = v
        else:
            flat[str(key)] = value
    return flat


def field_docs() -> dict[str, str]:
    """The docstring of every setting (read from this file's source; no import cost)."""
    import ast

    tree = ast.parse(Path(__file__).read_text(encoding="utf-8"))
    docs: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "Config":
            body = node.body
            for i, stmt in enumerate(body[:-1]):
                nxt = body[i + 1]
                if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                        and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                        and isinstance(nxt.value.value, str)):
                    docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs
