"""What a job's Ray workers need from the driver's environment, and nothing from the cluster's.

A Ray worker starts with the environment of whoever started the cluster (``ray start``, another job's
embedded cluster), overlaid with the job's ``runtime_env.env_vars``. Storage endpoint, AWS credential
source and model caches must therefore travel with the job, or a worker of one job silently reads and
writes with another's store and credentials. :func:`job_env_vars` takes them from the driver:

- a variable set in the driver travels with its value (paths made absolute: a worker's working directory
  is not the driver's);
- a variable *unset* in the driver travels as the empty string. botocore and the AWS C++ SDK (pyarrow)
  treat an empty key, session token or profile as absent, so the worker falls back to its default chain
  (instance or pod role, ``~/.aws`` of the worker's user) instead of the cluster starter's explicit
  values. For the libraries that would read an empty value literally (``HF_HOME=""`` is the current
  directory to huggingface_hub), :func:`drop_unset_markers` removes them again; it runs when ``adray`` is
  imported, which is before any adray code in a worker builds a storage client or imports a hub library.

``ADRAY_JOB_ENV`` lists the names the job carries (never values), so the worker knows which empty values
are markers rather than settings.

Secret values (:func:`is_secret_name`) do not travel in the ``runtime_env``: Ray writes its ``env_vars``,
values included, into ``runtime_env_agent.log`` on the cluster. :func:`split_job_secrets` takes them out;
the driver puts them into Ray's GCS key-value store under a key of its own job
(:func:`adray.pipeline.cluster.job_runtime_env`) and the ``runtime_env`` carries only that key
(``ADRAY_JOB_SECRETS``). :func:`apply_job_secrets` sets them in a worker's ``os.environ`` before adray
builds a storage client there (``adray`` import and :mod:`adray.storage`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

#: storage endpoint overrides read by ``adray.storage.s3_endpoint``
STORAGE_ENV = ("ADRAY_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
#: where AWS credentials come from (values or the files/profile naming them) and the region
CREDENTIAL_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
)
#: model weight caches and offline switches (read when the hub libraries are imported)
CACHE_ENV = ("HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "TORCH_HOME", "ADRAY_CACHE")
JOB_ENV_NAMES: tuple[str, ...] = STORAGE_ENV + CREDENTIAL_ENV + CACHE_ENV
#: names whose values are local paths
PATH_ENV = frozenset(
    {"AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "HF_HOME", "HF_HUB_CACHE", "TORCH_HOME", "ADRAY_CACHE"}
)
#: credential values: never logged or recorded
SECRET_ENV = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"})
#: parts of a variable name that mark its value as a secret (:func:`is_secret_name`)
SECRET_NAME_PARTS = ("SECRET", "TOKEN", "PASSWORD", "PASSWD", "KEY", "CREDENTIAL")
#: the comma-separated names a job's runtime environment carries
MARKER = "ADRAY_JOB_ENV"
#: the GCS key-value key under which a job's secret values wait for its workers (never the values)
SECRETS_MARKER = "ADRAY_JOB_SECRETS"
#: key-value namespace and key prefix of :data:`SECRETS_MARKER`
SECRETS_NAMESPACE = "adray"
SECRETS_PREFIX = "adray/job-secrets/"
#: the key whose secrets this process has set in its environment
_applied_key: str | None = None


def is_secret_name(name: str) -> bool:
    """Whether ``name``'s value is treated as a secret: a name in :data:`SECRET_ENV`, or one holding any of
    :data:`SECRET_NAME_PARTS` (case-insensitive: ``HF_TOKEN``, ``WANDB_API_KEY``, ``DB_PASSWORD``). Errs on
    the side of secret: such values stay out of Ray's ``runtime_env`` (:func:`split_secret_env`)."""
    upper = name.upper()
    return name in SECRET_ENV or any(part in upper for part in SECRET_NAME_PARTS)


def split_secret_env(env: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """``(plain, secret)``: ``env`` split by :func:`is_secret_name`.

    Ray writes a task's or actor's ``runtime_env`` (its ``env_vars`` with their values) into its own logs
    under the session directory (``runtime_env_agent.log``). Plain variables may travel there (they must:
    some, like ``OMP_WAIT_POLICY``, are read when the worker process starts); secret ones are handed to the
    actor's constructor instead, which sets them in ``os.environ`` first thing (see
    :class:`adray.pipeline.scoring.ScoringActor`)."""
    plain = {k: v for k, v in env.items() if not is_secret_name(k)}
    secret = {k: v for k, v in env.items() if is_secret_name(k)}
    return plain, secret


def job_env_vars(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env_vars`` for the job's Ray ``runtime_env``: every name in :data:`JOB_ENV_NAMES` with the
    driver's value (``""`` when unset there; local paths absolute), plus :data:`MARKER`."""
    environ = os.environ if environ is None else environ
    out: dict[str, str] = {}
    for name in JOB_ENV_NAMES:
        value = environ.get(name, "")
        if value and name in PATH_ENV and "://" not in value:
            value = os.path.abspath(os.path.expanduser(value))
        out[name] = value
    out[MARKER] = ",".join(JOB_ENV_NAMES)
    return out


def split_job_secrets(env_vars: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """``(plain, secret)``: a job's ``env_vars`` (:func:`job_env_vars`) split for the ``runtime_env``.
    ``secret`` holds the *set* variables whose names are secret (:func:`is_secret_name`); an unset one
    (``""``) stays in ``plain``, where it marks the name unset as before (:func:`drop_unset_markers`)."""
    secret = {k: v for k, v in env_vars.items() if v and k != MARKER and is_secret_name(k)}
    plain = {k: v for k, v in env_vars.items() if k not in secret}
    return plain, secret


def apply_job_secrets(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """In a worker of an attached job (``ADRAY_JOB_SECRETS`` set): fetch the job's secret variables from
    Ray's GCS key-value store and set them in ``environ`` (default ``os.environ``); returns their names,
    never logs values. Once per process and key: ``[]`` when done already, outside such a job, or when Ray
    is not connected here or the entry is not there (tried again on the next call). Clears
    :mod:`adray.storage`'s cached filesystems when it sets anything."""
    global _applied_key
    environ = os.environ if environ is None else environ
    key = environ.get(SECRETS_MARKER, "")
    if not key or key == _applied_key or not key.startswith(SECRETS_PREFIX):
        return []
    try:
        import json

        from ray.experimental import internal_kv

        if not internal_kv._internal_kv_initialized():
            return []
        raw = internal_kv._internal_kv_get(key, namespace=SECRETS_NAMESPACE)
    except Exception:  # noqa: BLE001 - no Ray or no GCS here: the environment stays as it is
        return []
    if raw is None:
        return []
    secrets = {str(k): str(v) for k, v in json.loads(raw).items()}
    environ.update(secrets)
    _applied_key = key
    import sys

    storage = sys.modules.get("adray.storage")
    if storage is not None and secrets:
        storage._s3fs.cache_clear()
    return sorted(secrets)


def describe(env_vars: Mapping[str, str]) -> str:
    """One log line's worth: which names travel set and which unset, values only for non-secrets."""
    names = [n for n in env_vars if n not in (MARKER, SECRETS_MARKER)]
    shown = [
        f"{n}={'<set>' if is_secret_name(n) else env_vars[n]}" for n in names if env_vars[n]
    ]
    unset = [n for n in names if not env_vars[n]]
    return f"set: {', '.join(shown) or 'none'}; unset: {', '.join(unset) or 'none'}"


def drop_unset_markers(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Remove the variables a job marked unset (empty, and named in :data:`MARKER`); returns their names.
    Without the marker (a process outside a job) nothing changes."""
    environ = os.environ if environ is None else environ
    names = [n for n in environ.get(MARKER, "").split(",") if n]
    dropped = [n for n in names if n in environ and environ[n] == ""]
    for name in dropped:
        del environ[name]
    return dropped
