"""adray.pipeline: the Ray Data scoring pipeline (manifest -> delta -> download -> decode -> detector actors
-> masks + typed rows -> Parquet -> run record) and DuckDB access to its results.

Public API: :func:`score_archive`, :func:`reinspect`, :class:`ScoreConfig`, :class:`RunSummary`,
:func:`adray.pipeline.query.connect`, and :class:`adray.pipeline.results_store.ResultsStore`: the layout of
an output root (result files, run records, masks, leases), the one place that knows it.
"""

from adray.pipeline.runner import RunCheckError, reinspect, score_archive
from adray.pipeline.spec import ScoreConfig
from adray.pipeline.summary import RunSummary

__all__ = ["RunCheckError", "RunSummary", "ScoreConfig", "reinspect", "score_archive"]
