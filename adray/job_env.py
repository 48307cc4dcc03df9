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


def describe(env_vars: Mapping[str, str]) -> str:
    """One log line's worth: which names travel set and which unset, values only for non-secrets."""
    names = [n for n in env_vars if n != MARKER]
    shown = [
        f"{n}={'<set>' if n in SECRET_ENV else env_vars[n]}" for n in names if env_vars[n]
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
