"""The Ray Data graph of one detector pass:

    work list (manifest rows) -> download(uri[, pc_uri]) -> decode + preprocess (CPU tasks)
      -> detector actor pool (ActorPoolStrategy) -> masks + typed rows (CPU tasks)
      -> write_parquet(results/detector=<name>/date=<YYYY-MM-DD>/<run_id>.<uuid>_*.parquet)

Bytes come from the manifest's URIs through Ray Data's ``download()`` expression (no listing on the
driver); a missing object yields null bytes and becomes a ``not_found`` row downstream. Result files
carry the run id in their name so readers can keep to committed runs and a resumed run can find its own.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa

from adray import storage
from adray.pipeline.decode import IMAGE_BYTES, PC_BYTES, decode_batch
from adray.pipeline.query import RUN_FILE_SEPARATOR
from adray.pipeline.rows import PARTITION_COLS, finalize_batch
from adray.pipeline.scoring import ScoringActor
from adray.pipeline.spec import DetectorSpec, ScoreConfig


@dataclass(frozen=True)
class DetectorPass:
    """One detector's share of a run: what to score and how to name it."""

    spec: DetectorSpec
    name: str  # detector name: the results partition
    needs_xyz: bool
    work: pa.Table  # manifest rows + detector_version, already minus delta/resume


def build_dataset(job: DetectorPass, config: ScoreConfig, run_id: str) -> Any:
    """The lazy Ray Dataset of result rows for one detector pass (nothing runs until it is written)."""
    import ray.data
    from ray.data.expressions import download

    work = job.work
    step = max(1, config.rows_per_block)
    blocks = [work.slice(i, step) for i in range(0, work.num_rows, step)] or [work]
    ds = ray.data.from_arrow(blocks)
    fs, _ = storage.pyarrow_filesystem(_first(work, "uri"))
    ds = ds.with_column(IMAGE_BYTES, download("uri", filesystem=fs))
    if job.needs_xyz:
        pc_fs, _ = storage.pyarrow_filesystem(_first(work, "pc_uri") or _first(work, "uri"))
        ds = ds.with_column(PC_BYTES, download("pc_uri", filesystem=pc_fs))
    env = config.actor_env_vars()
    # merged with the job's runtime_env (env_vars key by key; its other fields are inherited)
    actor_runtime = {"runtime_env": {"env_vars": env}} if env else {}
    cpu_spec = replace(job.spec, device="cpu")  # preprocessing never needs the accelerator
    ds = ds.map_batches(
        decode_batch,
        fn_kwargs={
            "spec": cpu_spec,
            "max_pixels": config.max_pixels,
            "max_points": config.max_points,
            "bit_depth": config.bit_depth,
            "needs_xyz": job.needs_xyz,
        },
        batch_size=config.decode_batch_size,
        batch_format="pyarrow",
        num_cpus=config.decode_cpus,
        # Ray's default task retries, stated explicitly: remote args that differ from the actor stage's
        # keep Ray from fusing decoding into the scoring actors, so it stays a separate CPU task pool.
        max_retries=3,
        udf_modifying_row_count=False,
    )
    ds = ds.map_batches(
        ScoringActor,
        fn_constructor_kwargs={
            "spec": job.spec,
            "warm_category": _first(work, "category"),
            "torch_threads": 0 if config.num_gpus else max(1, int(config.num_cpus)),
            "retain_memory": config.retain_memory,
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
        fn_kwargs={"run_id": run_id, "detector": job.name, "output": config.output},
        batch_size=config.batch_size,
        batch_format="pyarrow",
        num_cpus=0.5,
        udf_modifying_row_count=False,
    )


def write_results(ds: Any, output: str, run_id: str) -> None:
    """``write_parquet`` into ``results/`` partitioned by detector and date; file names start with the run id."""
    from ray.data.datasource import FilenameProvider

    class RunFilenameProvider(FilenameProvider):
        def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
            return f"{run_id}{RUN_FILE_SEPARATOR}{write_uuid}_{task_index:06}"

    fs, path = storage.pyarrow_filesystem(storage.join_url(output, "results"))
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
