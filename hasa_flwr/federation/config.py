"""Run config -> validated settings, and the strategy presets.

Every name is checked here, before any node is contacted, so a typo fails in a second with a
message that lists the valid choices instead of after minutes of training.
"""

from __future__ import annotations

import math
from pathlib import Path
from dataclasses import asdict, dataclass
from typing import Any

import torch

from hasa_flwr.method.aggregation import AGGREGATIONS
from hasa_flwr.method.allocation import RULES
from hasa_flwr.data import DATASETS, TEXT_DATASETS, FederatedData, Source, load_federated
from hasa_flwr.method.models import build_model, full_sizes
from hasa_flwr.method.scores import SCORES
from hasa_flwr.method.subnet import EXTRACTIONS, prefix_state
from hasa_flwr.method.train import OPTIMIZERS

# strategy -> (allocation rule, extraction, aggregation); the `allocation` / `extraction` / `aggregation`
# keys override any axis
STRATEGIES: dict[str, tuple[str, str, str]] = {
    "uniform": ("uniform", "prefix", "full"),
    "hasa": ("hasa", "prefix", "full"),
    "hasa-inverse": ("hasa-inverse", "prefix", "full"),
    "hasa-random": ("hasa-random", "prefix", "full"),
    "heterofl": ("tiers", "prefix", "full"),
    "fedrolex": ("uniform", "rolling", "full"),
    "fedrop": ("uniform", "random", "full"),
    "fjord": ("uniform", "ordered", "full"),
    # spare width as one client's own units: selective, or the full average would shrink their updates
    "hasa-focus": ("focus", "prefix", "selective"),
    # mid-sized clients widened, each with units of its own (extraction own), trained by it alone
    "midsize": ("midsize", "own", "selective"),
}
BUDGET_COSTS = ("width", "macs")
# Two definitions the paper leaves open (text): what the jsd/entropy histogram counts, and what n_i
# counts in the budget's weights n_i/N. Images have one label per image, so only the defaults apply.
HISTOGRAMS = ("targets", "tokens")   # next-word targets | every in-vocabulary word of the training titles
SIZE_UNITS = ("samples", "titles")   # prefix samples (labelled targets) | training titles
MODEL_OF = {"synthetic": "lstm", "text": "lstm", "digits": "cnn", "images": "cnn"}


@dataclass(frozen=True)
class Settings:
    num_rounds: int
    results_dir: str
    dataset: str
    data_path: str
    num_clients: int
    strategy: str
    allocation: str
    extraction: str
    aggregation: str
    score: str
    budget: float
    budget_cost: str
    width_min: float
    width_max: float
    width_caps: tuple[float, ...]      # one per partition id (simulation); nodes may override
    local_epochs: int
    batch_size: int
    lr: float
    optimizer: str
    momentum: float
    embed_dim: int
    hidden_dim: int
    scaler: bool
    seed: int
    test_fraction: float
    dirichlet_alpha: float
    min_count: int
    wait_seconds: float
    round_timeout: float
    score_values: tuple[float, ...] = ()   # score="given": one per partition id
    text_column: str = "title"
    client_column: str = ""
    max_title_words: int = 24
    vocab_path: str = ""
    one_exchange: bool = True          # evaluation rides on the next round's train message (prefix units)
    save_model: bool = True            # the supernet and every client's subnet next to results.json
    init_from: str = ""                # a saved supernet (model folder or run folder) to start from
    class_names: str = ""              # images: "cat,dog,..." (label = index); "" = each client's class folders
    secure_stats: bool = False         # count vectors only as SecAgg+ sums; clients compute their own scores
    vocab_candidates: str = ""         # secure-stats: public candidate words whose pooled counts make the vocabulary
    min_train_clients: int = 0         # the fewest clients the run goes on with (0 = every client: strict)
    fraction_train: float = 1.0        # clients sampled per training round (seeded; the same for every strategy)
    fraction_evaluate: float = 1.0     # clients evaluating each intermediate round's model (the final covers all)
    round_deadline: float = 0.0        # seconds a round waits for replies (0: round-timeout); late ones are left out
    score_histogram: str = "targets"   # what a client's score histogram counts (HISTOGRAMS)
    size_unit: str = "samples"         # what n_i counts in the budget (SIZE_UNITS); aggregation weights stay samples
    reply_poll: float = 0.2            # deployment: seconds between the ServerApp's pulls for replies (Flower: 3)
    resume_from: str = ""              # a run folder with checkpoints: continue that run from its last complete round

    @property
    def model(self) -> str:
        return MODEL_OF[self.dataset]

    @property
    def sizes(self) -> dict[str, int]:
        """Full sizes of the supernet's scalable dimensions."""
        return full_sizes(self.model, self.embed_dim, self.hidden_dim)

    @property
    def min_clients(self) -> int:
        """A device lost before training (e.g. during a secure round) is left out while this many remain."""
        return self.min_train_clients or self.num_clients

    @property
    def deadline(self) -> float:
        """How long each training or evaluation exchange waits for replies."""
        return self.round_deadline or self.round_timeout

    @property
    def fused_evaluation(self) -> bool:
        """One exchange per round: only where a train message holds the units the metric needs (the
        client's deployed subnet: its prefix, or its own units under `own`)."""
        return self.one_exchange and self.extraction in ("prefix", "ordered", "own")

    def budget_size(self, n_train: int, n_train_rows: int) -> int:
        """A client's n_i in the budget's weights: its samples, or its titles under size-unit=titles."""
        return n_train_rows if self.size_unit == "titles" else n_train

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Settings:
        """Inverse of to_dict (results.json's "config"), also for results recorded by earlier versions."""
        d = upgrade_recorded(d)
        return cls(**{**d, "width_caps": tuple(d["width_caps"]), "score_values": tuple(d.get("score_values", ()))})

    @property
    def source(self) -> Source:
        """Where each client's data is and how it is shaped (what a node needs to load its own)."""
        return Source(self.dataset, self.data_path, self.text_column, self.client_column, self.num_clients, self.seed,
                      self.test_fraction, self.max_title_words, self.min_count, self.vocab_path, self.dirichlet_alpha,
                      tuple(n for n in self.class_names.split(",") if n))

    def load_data(self) -> FederatedData:
        """The whole federation's data as its nodes derive it, with the agreed vocabulary (simulation tools)."""
        return load_federated(self.source)

    def build(self, num_classes: int, width: float = 1.0,
              input_shape: tuple[int, ...] | None = None) -> torch.nn.Module:
        """The width-``width`` member of this run's supernet family (random weights).

        ``input_shape``: the images' (channels, height, width), which only the data knows (digits:
        1x8x8 by default; text: unused)."""
        if input_shape is None and self.dataset == "images":
            raise ValueError("dataset 'images' builds its CNN for the data's image shape: pass input_shape")
        return build_model(self.model, num_classes, self.sizes, width, scaler=self.scaler, input_shape=input_shape)

    def prefix_of(self, full: torch.nn.Module, num_classes: int, width: float) -> torch.nn.Module:
        """The deployable width-``width`` prefix subnet of a full supernet (what clients evaluate),
        for the full model's input shape."""
        sub = self.build(num_classes, width, getattr(full, "input_shape", None))
        sub.load_state_dict(prefix_state(full.state_dict(), full.slicing_spec(), self.sizes, width))
        return sub

    def initial_model(self, num_classes: int, input_shape: tuple[int, ...] | None = None) -> torch.nn.Module:
        """The full supernet every strategy starts from for this seed (matched seeds)."""
        torch.manual_seed(self.seed)
        return self.build(num_classes, input_shape=input_shape)


def upgrade_recorded(d: dict[str, Any]) -> dict[str, Any]:
    """A results.json config from before user data: dataset "medium" is the text source by publication."""
    if d.get("dataset") != "medium":
        return d
    path = str(d.get("data_path") or "")
    if path and not path.endswith(".csv"):
        path = str(Path(path) / "medium_data.csv")
    return {**d, "dataset": "text", "client_column": "publication", "data_path": path or "medium_data.csv"}


def choose(key: str, value: str, choices) -> str:
    if value not in choices:
        raise ValueError(f"unknown {key} '{value}': choose one of {', '.join(choices)}")
    return value


def parse_per_client(key: str, text: str, num_clients: int, *, broadcast: bool) -> tuple[float, ...]:
    """'0.8' (every client, if ``broadcast``) or '0.8,0.5,...' (one per partition id)."""
    try:
        values = [float(v) for v in str(text).replace(" ", "").split(",") if v]
    except ValueError:
        raise ValueError(f"{key} '{text}' is not a number or a comma-separated list of numbers") from None
    if broadcast and len(values) == 1:
        values *= num_clients
    if len(values) != num_clients or not all(math.isfinite(v) for v in values):
        one = "one number or " if broadcast else ""
        raise ValueError(f"{key} lists {len(values)} finite values for {num_clients} clients: give {one}"
                         f"{num_clients} comma-separated numbers")
    return tuple(values)


def parse_score_values(score: str, text: str, num_clients: int) -> tuple[float, ...]:
    if score != "given":
        if str(text).strip():
            raise ValueError(f"score-values is only read with score='given' (score is '{score}'): set "
                             "score='given' or drop score-values")
        return ()
    if not str(text).strip():
        raise ValueError("score='given' needs score-values: one number per partition id, e.g. "
                         "score-values='0.3,0.1,...'")
    return parse_per_client("score-values", text, num_clients, broadcast=False)


def parse_class_names(dataset: str, text: str) -> str:
    """'cat, dog,bird' -> 'cat,dog,bird': the federation's classes in label order (images only)."""
    names = [n.strip() for n in str(text).split(",") if n.strip()]
    if names and dataset != "images":
        raise ValueError(f"class-names is only read with dataset='images' (dataset is '{dataset}'): drop class-names")
    if len(set(names)) != len(names):
        raise ValueError(f"class-names '{text}' lists a class twice: name each class folder once")
    return ",".join(names)


def at_least(key: str, value: int, low: int) -> int:
    if value < low:
        raise ValueError(f"{key} must be at least {low}, got {value}")
    return value


def positive(key: str, value: float) -> float:
    if not value > 0:
        raise ValueError(f"{key} must be positive, got {value}")
    return value


def settings_from_run_config(rc: dict[str, Any]) -> Settings:
    """Validate the run config; raise ValueError with a one-line, actionable message."""
    strategy = choose("strategy", str(rc["strategy"]), STRATEGIES)
    rule, extraction, aggregation = STRATEGIES[strategy]
    num_clients = typed(rc, "num-clients", int)
    if num_clients < 2:
        raise ValueError(f"num-clients must be at least 2, got {num_clients}")
    return Settings(
        num_rounds=int(positive("num-server-rounds", typed(rc, "num-server-rounds", int))),
        results_dir=str(rc["results-dir"]),
        dataset=choose("dataset", str(rc["dataset"]), DATASETS),
        data_path=str(rc["data-path"]),
        num_clients=num_clients,
        strategy=strategy,
        allocation=choose("allocation", str(rc["allocation"]) or rule, RULES),
        extraction=choose("extraction", str(rc["extraction"]) or extraction, EXTRACTIONS),
        aggregation=choose("aggregation", str(rc["aggregation"]) or aggregation, AGGREGATIONS),
        score=choose("score", str(rc["score"]), SCORES),
        budget=typed(rc, "budget", float),
        budget_cost=choose("budget-cost", str(rc["budget-cost"]), BUDGET_COSTS),
        score_histogram=text_only(rc, "score-histogram", HISTOGRAMS),
        size_unit=text_only(rc, "size-unit", SIZE_UNITS),
        width_min=typed(rc, "width-min", float),
        width_max=typed(rc, "width-max", float),
        width_caps=parse_per_client("width-cap", rc["width-cap"], num_clients, broadcast=True),
        local_epochs=int(positive("local-epochs", typed(rc, "local-epochs", int))),
        batch_size=int(positive("batch-size", typed(rc, "batch-size", int))),
        lr=positive("lr", typed(rc, "lr", float)),
        optimizer=choose("optimizer", str(rc["optimizer"]), OPTIMIZERS),
        momentum=non_negative("momentum", typed(rc, "momentum", float)),
        embed_dim=int(positive("embed-dim", typed(rc, "embed-dim", int))),
        hidden_dim=int(positive("hidden-dim", typed(rc, "hidden-dim", int))),
        scaler=typed(rc, "scaler", bool),
        seed=typed(rc, "seed", int),
        test_fraction=typed(rc, "test-fraction", float),
        dirichlet_alpha=positive("dirichlet-alpha", typed(rc, "dirichlet-alpha", float)),
        min_count=typed(rc, "min-count", int),
        wait_seconds=positive("wait-seconds", typed(rc, "wait-seconds", float)),
        round_timeout=positive("round-timeout", typed(rc, "round-timeout", float)),
        score_values=parse_score_values(str(rc["score"]), rc["score-values"], num_clients),
        text_column=str(rc["text-column"]),
        client_column=str(rc["client-column"]),
        max_title_words=at_least("max-title-words", typed(rc, "max-title-words", int), 2),
        vocab_path=str(rc["vocab-path"]),
        class_names=parse_class_names(str(rc["dataset"]), rc["class-names"]),
        init_from=str(rc["init-from"]),
        save_model=typed(rc, "save-model", bool),
        one_exchange=typed(rc, "one-exchange", bool),
        secure_stats=secure_stats(rc, num_clients),
        vocab_candidates=str(rc["vocab-candidates"]),
        min_train_clients=min_train_clients(rc, num_clients),
        fraction_train=fraction("fraction-train", typed(rc, "fraction-train", float)),
        fraction_evaluate=fraction("fraction-evaluate", typed(rc, "fraction-evaluate", float)),
        round_deadline=non_negative("round-deadline", typed(rc, "round-deadline", float)),
        reply_poll=poll_interval(typed(rc, "reply-poll", float)),
        resume_from=str(rc["resume-from"]),
    )


def text_only(rc: dict[str, Any], key: str, choices: tuple[str, ...]) -> str:
    """An option that reads text titles: anything but its default is refused for image data."""
    value = choose(key, str(rc[key]), choices)
    if value != choices[0] and str(rc["dataset"]) not in TEXT_DATASETS:
        raise ValueError(f"{key}='{value}' reads text titles, but dataset '{rc['dataset']}' has one label per image: "
                         f"use {key}='{choices[0]}'")
    return value


def fraction(key: str, value: float) -> float:
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{key} must be in (0, 1] (the share of clients per round), got {value}")
    return value


def poll_interval(value: float) -> float:
    if not 0.01 <= value <= 60:
        raise ValueError(f"reply-poll must be between 0.01 and 60 seconds (how often the server checks for replies; "
                         f"Flower's own interval is 3), got {value}")
    return value


def typed(rc: dict[str, Any], key: str, kind: type) -> Any:
    """``rc[key]`` as ``kind`` (bool, int or float), or a one-line ValueError that names the key:
    `flwr run --run-config "budget='abc'"` says which key, and "false" never reads as true."""
    value = rc[key]
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"run-config key {key} must be true or false, got {value!r}")
        return value
    try:
        number = kind(value)
    except (TypeError, ValueError):
        number = None
    if number is None or isinstance(value, bool) or (kind is int and number != value):
        raise ValueError(f"run-config key {key} must be {'a whole number' if kind is int else 'a number'}, "
                         f"got {value!r}")
    return number


def non_negative(key: str, value: float) -> float:
    if value < 0 or not math.isfinite(value):
        raise ValueError(f"{key} must be 0 or a positive number, got {value}")
    return value


def secure_stats(rc: dict[str, Any], num_clients: int) -> bool:
    """secure-stats needs >= 3 clients (with two, each learns the other's counts from the pooled
    ones) and, for text, a vocabulary that is not made from clear word counts."""
    if not typed(rc, "secure-stats", bool):
        return False
    if num_clients < 3:
        raise ValueError(f"secure-stats needs at least 3 clients, got num-clients={num_clients}: with two, each "
                         "could subtract its own counts from the pooled ones; turn secure-stats off")
    if str(rc["dataset"]) in ("synthetic", "text") and not str(rc["vocab-path"]) and not str(rc["vocab-candidates"]):
        raise ValueError("secure-stats on text needs vocab-path (a shared vocabulary) or vocab-candidates (public "
                         "words whose pooled counts are summed securely; `hasa candidates --out FILE` writes one)")
    return True


def min_train_clients(rc: dict[str, Any], num_clients: int) -> int:
    value = typed(rc, "min-train-clients", int)
    if not 0 <= value <= num_clients:
        raise ValueError(f"min-train-clients must be 0 (every client) or 1..num-clients ({num_clients}), got {value}")
    return value
