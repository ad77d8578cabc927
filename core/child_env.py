"""The environment of the child processes Tailor starts (the trainer worker, vLLM engines).

A child gets what its runtime needs from the parent's environment, never the whole of it:
the gateway's environment holds the admin key, database URLs and cloud credentials, and a
child that runs tenants' work (training on their data, calling a teacher URL they chose,
serving their adapters) cannot leak what it never had. Each caller adds what that child
needs on top of `runtime_env`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

# Credentials of the stores, by URL scheme: the trainer worker gets a store's only where it
# uses that store (gateway.trainer_process); training processes get none (trainer.compute.launch).
STORE_CREDENTIALS = {
    "s3": ("AWS_",),
    "s3a": ("AWS_",),
    "gs": ("GOOGLE_", "GCLOUD_"),
    "gcs": ("GOOGLE_", "GCLOUD_"),
    "az": ("AZURE_",),
    "abfs": ("AZURE_",),
    "abfss": ("AZURE_",),
    "postgresql+psycopg": ("PG",),
}

# What Python, torch, CUDA, tokenizers and tracing read, by exact name ...
RUNTIME_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "TEMP",
        "TMP",
        "VIRTUAL_ENV",
        "LD_LIBRARY_PATH",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "XDG_CACHE_HOME",
        "OMP_NUM_THREADS",
        "TOKENIZERS_PARALLELISM",
    }
)
# ... and by prefix.
RUNTIME_PREFIXES = (
    "LC_",
    "PYTHON",
    "CUDA_",
    "NCCL_",
    "HF_",
    "TRANSFORMERS_",
    "TORCH",
    "PYTORCH_",
    "TRITON_",
    "MKL_",
    "OPENBLAS_",
    "ACCELERATE_",
    "VLLM_",
    "OTEL_",
)


def runtime_env(
    environ: Mapping[str, str], *, names: Iterable[str] = (), prefixes: tuple[str, ...] = ()
) -> dict[str, str]:
    """The runtime's variables of `environ`, plus those named or prefixed by the caller."""
    wanted = RUNTIME_NAMES | {n.upper() for n in names}
    starts = RUNTIME_PREFIXES + prefixes
    return {k: v for k, v in environ.items() if k.upper() in wanted or k.upper().startswith(starts)}


def store_credential_prefixes() -> tuple[str, ...]:
    """Every store's credential variable prefixes."""
    return tuple(sorted({p for prefixes in STORE_CREDENTIALS.values() for p in prefixes}))
