"""The Ray Data graph of one detector pass:

    work list (manifest rows) -> read(uri[, pc_uri]) + decode + preprocess (CPU tasks)
      -> detector actor pool (ActorPoolStrategy) -> masks + typed rows (CPU tasks)
      -> write_parquet(results/detector=<name>/date=<YYYY-MM-DD>/<run_id>.<uuid>_*.parquet)

The decode tasks read the manifest's URIs themselves through :mod:`adray.storage` (no listing on the
driver; :func:`adray.pipeline.decode.fetch_batch`): a missing object becomes a ``not_found`` row, one that
could not be read now (403, throttling, 5xx, timeouts) a ``read_error`` row after bounded retries, which
re-inspection picks up again. Ray Data's ``download()`` expression is not used: it turns every read error
into null bytes, so a 403 window looked like deleted objects. Reading in the decode task also keeps the
bytes out of Ray's object store between a download actor and the decode task, and takes one more Ray
process (the download actor) off the machine. Result files carry the run id in their name so readers can
keep to committed runs and a resumed run can find its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from adray import job_env, storage
from adray.pipeline.decode import decode_batch, merge_passes
from adray.pipeline.results_store import PARTITION_COLS, ResultsStore, result_file_stem
from adray.pipeline.rows import finalize_batch
from adray.pipeline.scoring import ScoringActor
from adray.pipeline.spec import DetectorSpec, ScoreConfig


@dataclass(frozen=True)
class DetectorPass:
    """One detector's share of a run: what to score and how to name it."""

    spec: DetectorSpec
    name: str  # detector name: the results partition
    needs_xyz: bool
    work: pa.Table  # manifest rows + detector_version, already minus delta/resume


def build_dataset(job: DetectorPass | Sequence[DetectorPass], config: ScoreConfig, run_id: str) -> Any:
    """The lazy Ray Dataset of result rows for one detector pass, or for all passes of a run at once
    (nothing runs until it is written).

    With several passes the work lists are merged (:func:`adray.pipeline.decode.merge_passes`): each item
    is read and decoded once and preprocessed for every detector that scores it; one actor pool holds
    every detector and scores each row with its own (``pass_index``); rows land under their detector."""
    import ray.data

    jobs = [job] if isinstance(job, DetectorPass) else list(job)
    work = jobs[0].work if len(jobs) == 1 else merge_passes([j.work for j in jobs])
    step = max(1, config.rows_per_block)
    blocks = [work.slice(i, step) for i in range(0, work.num_rows, step)] or [work]
    ds = ray.data.from_arrow(blocks)
    # Plain variables go in the actors' runtime_env (merged with the job's, env_vars key by key; its other
    # fields are inherited). Secret-named ones go to the constructor: Ray logs runtime_env values.
    env, secret_env = job_env.split_secret_env(config.actor_env_vars())
    actor_runtime = {"runtime_env": {"env_vars": env}} if env else {}
    ds = ds.map_batches(
        decode_batch,
        fn_kwargs=_decode_kwargs(jobs, config),
        batch_size=config.decode_batch_size,
        batch_format="pyarrow",
        num_cpus=config.decode_cpus,
        # Ray's default task retries, stated explicitly: remote args that differ from the actor stage's
        # keep Ray from fusing decoding into the scoring actors, so it stays a separate CPU task pool.
        max_retries=3,
        udf_modifying_row_count=len(jobs) > 1,  # one row per (item, detector)
    )
    ds = ds.map_batches(
        ScoringActor,
        fn_constructor_kwargs={
            **_scoring_detectors(jobs),
            "torch_threads": 0 if config.num_gpus else max(1, int(config.num_cpus)),
            "retain_memory": config.retain_memory,
            "secret_env": secret_env,
        },
        compute=ray.data.ActorPoolStrategy(size=config.actors),
        batch_size=config.batch_size,
        batch_format="pyarrow",
        num_cpus=config.num_cpus,
        num_gpus=config.num_gpus,
        **actor_runtime,
        udf_modifying_row_count=False,
    )
    return ds.map_batches(
        finalize_batch,
        fn_kwargs={
            "run_id": run_id,
            "detector": jobs[0].name,
            "output": config.output,
            "pixel_size_mm": config.pixel_size_mm,
        },
        batch_size=config.batch_size,
        batch_format="pyarrow",
        num_cpus=0.5,
        udf_modifying_row_count=False,
    )


def _decode_kwargs(jobs: list[DetectorPass], config: ScoreConfig) -> dict[str, Any]:
    """The decode stage's keyword arguments: its detectors and the run's read and size limits."""
    return {
        **_decode_detectors(jobs),
        "max_pixels": config.max_pixels,
        "max_points": config.max_points,
        "bit_depth": config.bit_depth,
        "allow_prefixes": tuple(config.allow_prefixes),
        "read_attempts": config.read_attempts,
    }


def _decode_detectors(jobs: list[DetectorPass]) -> dict[str, Any]:
    """The decode stage's detector arguments; preprocessing never needs the accelerator."""
    cpu_specs = [j.spec.replace(device="cpu") for j in jobs]
    if len(jobs) == 1:
        return {"spec": cpu_specs[0], "needs_xyz": jobs[0].needs_xyz}
    return {
        "specs": tuple(cpu_specs),
        "needs_xyz": tuple(j.needs_xyz for j in jobs),
        "names": tuple(j.name for j in jobs),
    }


def _scoring_detectors(jobs: list[DetectorPass]) -> dict[str, Any]:
    if len(jobs) == 1:
        return {"spec": jobs[0].spec, "warm_category": _first(jobs[0].work, "category")}
    return {
        "specs": tuple(j.spec for j in jobs),
        "warm_categories": tuple(_first(j.work, "category") for j in jobs),
    }


def write_results(ds: Any, output: str, run_id: str) -> None:
    """``write_parquet`` into ``results/`` partitioned by detector and date; file names start with the run id."""
    from ray.data import DataContext
    from ray.data.datasource import FilenameProvider

    class RunFilenameProvider(FilenameProvider):
        def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
            return result_file_stem(run_id, write_uuid, task_index)

    # Ray Data's Parquet writer retries a failed file write and its directory checks (the datasink's
    # filesystem, DataContext.retried_io_errors, 10 attempts): the only retry layer, so pyarrow sends each
    # request once. Its default messages miss 500/502/504 (a HeadObject 500 failed a whole run), so every
    # transient answer storage retries elsewhere is added; the datasink reads the context when built.
    context = DataContext.get_current()
    known = list(context.retried_io_errors)
    context.retried_io_errors = known + [m for m in storage.PYARROW_TRANSIENT_MESSAGES if m not in known]
    fs, path = ResultsStore(output).results_filesystem(attempts=1)
    ds.write_parquet(
        path,
        filesystem=fs,
        partition_cols=list(PARTITION_COLS),
        filename_provider=RunFilenameProvider(),
        mode="append",
    )


def _first(table: pa.Table, column: str) -> Any:
    for value in table.column(column).to_pylist():
        if value:
            return value
    return None
