"""adray: distributed batch scoring for industrial image anomaly detection on Ray."""

__version__ = "0.1.0"

# In a Ray worker, variables the driver did not set travel as empty markers; drop them before any
# storage client or hub library reads them (see adray/job_env.py).
from adray import job_env as _job_env  # noqa: E402

_job_env.drop_unset_markers()
_job_env.apply_job_secrets()
