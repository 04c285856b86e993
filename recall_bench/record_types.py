"""The run record's shape as types: the record and its blocks (docs/results-schema.md says
what each field means). A record stays a plain dict in JSON and in memory; these types only
name its keys, for readers and type checkers. Keys a record may lack (a side memory's
parameter counts, an in-tool run's store) sit in a `total=False` class.
"""

from __future__ import annotations

from typing import Any, TypedDict


class World(TypedDict):
    """`world`: what was memorized."""

    kind: str  # facts, facts-rule<alpha>, random-tokens
    spec: dict[str, Any]  # the world spec's fields
    hash: str  # of the spec
    entropy_bits: float  # exact information content of the whole world


class _Params(TypedDict):
    total: int
    non_embedding: int


class Params(_Params, total=False):
    """`params`: parameter counts; a side memory adds its memory, dense and active counts."""

    memory: int
    dense: int
    active_per_token: int


class _Train(TypedDict):
    steps: int
    stop_reason: str  # recall, plateau, budget
    wall_s: float


class Train(_Train, total=False):
    """`train`: how far training went and why it stopped (every fact run has all of it;
    summaries of other experiments keep the first three)."""

    budget: int
    batch_size: int
    lr: float
    trained_facts: int
    exposures_per_fact: float
    converged: bool
    plateaued: bool
    late_bits_gain: float | None  # share of the monitored bits gained over late_window
    late_window: float
    final_loss: float
    compile_s: float
    ensemble_size: int
    resumes: list[dict[str, Any]]  # per resume: its step and the code it ran on
    history: list[dict[str, Any]]  # per progress check: step, loss, recall, bits
    whole_loss_late_drop: float | None  # joint protocol: the whole loss's late drop
    fact_bits_late_gain: float | None  # joint protocol: the monitored fact bits' late gain
    rows: int  # consolidation: rows of the offline mixture
    schedule: str  # consolidation: the learning-rate schedule


class Metrics(TypedDict, total=False):
    """`metrics`: what came out, each higher or lower is better (records.BETTER); in-tool
    runs carry their bits under the delivered names (records.IN_TOOL_NAMES). Degradation
    runs add per-skill scores (`<skill>_accuracy`, `<skill>_kl`, ...) beside these."""

    recall: float
    recall_trained: float
    recall_unseen: float | None
    token_accuracy: float
    bits_memorized: float
    bits_per_param: float
    bits_per_param_non_embedding: float
    bits_per_memory_param: float
    bits_memorized_corrected: float
    bits_per_param_corrected: float
    noise_floor_bits_per_fact: float
    bits_per_active_param: float
    bits_delivered: float
    bits_delivered_per_param: float
    bits_delivered_per_param_non_embedding: float
    bits_delivered_exceptions: float
    value_nll_bits: float
    call_valid: float
    call_key_accuracy: float
    copy_accuracy: float
    recall_rule: float
    recall_exceptions: float
    bits_memorized_exceptions: float
    held_out_rule_accuracy: float
    held_out_accuracy: float
    store_errors: float
    lookup_s: float
    eval_s: float
    train_loss: float
    held_out_loss: float
    general_accuracy: float
    general_accuracy_kept: float | None
    general_loss: float
    kl: float
    tv: float
    general_mc_accuracy: float
    general_mc_kept: float
    recall_without_store: float
    bits_without_store: float
    bits_moved: float
    recall_through_store: float
    call_valid_through_store: float
    old_recall: float
    old_bits: float
    old_recall_kept: float
    tool_recall_fresh: float
    tool_call_valid_fresh: float
    tool_recall_fresh_kept: float
    loss: float
    old_bits_kept: float
    dtheta_rel: float
    context_missing: float
    # informational, not ranked (no direction in records.BETTER)
    rule_accuracy: float  # structured worlds: how often the rule alone gives the value
    held_out_facts: int  # structured worlds: facts of the held-out entities
    protocol_key_overlap: int  # protocol pool: evaluated keys that the pool also holds
    uniform_loss: float  # random tokens: the loss of a uniform guess, ln vocab


class Env(TypedDict):
    """`env`: the code and machine the run's training started from (records.environment)."""

    python: str
    jax: str | None
    jaxlib: str | None
    flax: str | None
    optax: str | None
    orbax: str | None
    numpy: str | None
    platform: str
    backend: str
    device_kind: str
    device_count: int
    cpu_count: int | None
    git_commit: str | None
    git_dirty: bool | None


class _Cost(TypedDict):
    tokens_generated: float
    tokens_inserted: float
    tokens_fed: float
    flops: float
    param_bytes: int
    kv_cache_bytes: int
    latency_batch1_s: float
    latency_large_batch_s: float
    latency_large_batch: int


class Cost(_Cost, total=False):
    """`cost`: per answered fact (recall_bench/cost.py); in-tool adds its store's bytes."""

    store_memory_bytes: int | None
    store_disk_bytes: int


class Store(TypedDict, total=False):
    """`store`: an in-tool run's store (store-scale adds build and lookup timings)."""

    kind: str
    facts: int
    build_s: float
    lookup_s: float
    lookups: int


class _Record(TypedDict):
    schema: str
    benchmark_version: str
    run_id: str
    created: str
    mode: str
    n_facts: int
    seed: int
    better: dict[str, str]  # every metric's direction that records.BETTER knows
    env: Env
    determinism: str


class Record(_Record, total=False):
    """One run record (schema records.RECORD_SCHEMA). Quantization and probe records
    (`kind`) share the provenance fields and hold their rows instead of train and metrics."""

    params: Params
    metrics: Metrics
    bits_per_fact: float
    config: dict[str, Any]  # the full resolved run config
    config_hash: str
    world: World
    model: dict[str, Any]  # the architecture fields (model.ModelConfig)
    train: Train
    store: Store
    cost: Cost
    degrade: dict[str, Any]  # degrade cells: the degrade config and the base model
    protocol: str  # joint cells: "joint"
    joint: dict[str, Any]  # joint cells: the joint config
    tool_base: dict[str, Any]  # tool-base cells: the cell (method, lr, replay) and its base
    base: dict[str, Any]  # consolidation cells: the base model's training
    consolidation: dict[str, Any]  # consolidation cells: the data (answered, right shares)
    trajectory: list[dict[str, Any]]  # consolidation cells: every measure at each evaluation
    kind: str  # quantization, probe
    source: dict[str, Any]  # quantization, probe: the run they start from
