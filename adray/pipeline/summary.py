"""What a run did, for people: counts, throughput and where the results are (:class:`RunSummary`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from adray import storage
from adray.tables import text_table


@dataclass
class DetectorCounts:
    """Counts of one detector in one run. ``rows_in`` = applicable items to score; ``rows_out`` = rows stored."""

    name: str
    versions: list[str]
    rows_in: int = 0
    rows_out: int = 0
    ok: int = 0
    errors: int = 0
    anomalous: int = 0
    undecided: int = 0  # ok rows without a decision (no threshold): the summary says n/a, never 0
    not_applicable: int = 0  # items of its own categories it cannot score (not those auto gave others)
    skipped_delta: int = 0  # already scored by committed runs with the same content (re-inspection)
    resumed: int = 0  # already written by this run id before (re-run or resume)
    scored_now: int = 0  # rows produced by this invocation
    status_counts: dict[str, int] = field(default_factory=dict)


def anomalous_cell(d: DetectorCounts) -> str:
    """The summary's "anomalous" cell: the count when every ok row has a decision; ``n/a`` when none
    has; ``<n> (+<m> n/a)`` when only some have (a detector without a threshold for some categories)."""
    if d.undecided <= 0 or d.ok == 0:
        return str(d.anomalous)
    if d.undecided >= d.ok:
        return "n/a"
    return f"{d.anomalous} (+{d.undecided} n/a)"


@dataclass
class RunSummary:
    """The result of :func:`adray.pipeline.score_archive` / :func:`adray.pipeline.reinspect`."""

    run_id: str
    input: str
    manifest: str
    output: str
    results_url: str
    masks_url: str
    run_record_url: str
    items: int  # manifest items selected (split / categories / limit)
    detectors: list[DetectorCounts]
    elapsed_s: float
    scoring_s: float
    references: dict[str, list[str]] = field(default_factory=dict)
    removed_partial_files: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # A summary is printed and stored: its URLs never carry user info (credentials).
        for name in ("input", "manifest", "output", "results_url", "masks_url", "run_record_url"):
            setattr(self, name, storage.redact_url(getattr(self, name)))
        self.removed_partial_files = [storage.redact_url(u) for u in self.removed_partial_files]

    def total(self, key: str) -> int:
        return sum(int(getattr(d, key)) for d in self.detectors)

    @property
    def rows_in(self) -> int:
        return self.total("rows_in")

    @property
    def rows_out(self) -> int:
        return self.total("rows_out")

    @property
    def throughput(self) -> float:
        """Rows scored by this invocation per second of pipeline execution."""
        done = self.total("scored_now")
        return done / self.scoring_s if self.scoring_s > 0 else 0.0

    def counts(self) -> dict[str, int]:
        return {
            "in": self.rows_in,
            "out": self.rows_out,
            "ok": self.total("ok"),
            "error": self.total("errors"),
            "anomalous": self.total("anomalous"),
            "not_applicable": self.total("not_applicable"),
        }

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(rows_in=self.rows_in, rows_out=self.rows_out, throughput=self.throughput)
        return d

    def format_table(self) -> str:
        """A plain-text summary: one line per detector, totals, throughput and the result locations."""
        cols = [
            "detector",
            "items",
            "ok",
            "errors",
            "anomalous",
            "n/a",
            "skipped",
            "resumed",
            "scored",
            "rows in/out",
        ]
        rows = []
        for d in self.detectors:
            rows.append(
                [
                    d.name,
                    str(d.rows_in + d.not_applicable + d.skipped_delta),
                    str(d.ok),
                    str(d.errors),
                    anomalous_cell(d),
                    str(d.not_applicable),
                    str(d.skipped_delta),
                    str(d.resumed),
                    str(d.scored_now),
                    f"{d.rows_in}/{d.rows_out}",
                ]
            )
        lines = [f"run {self.run_id}: {self.items} items from {self.input}", text_table(cols, rows)]
        check = "OK" if self.rows_in == self.rows_out else "MISMATCH"
        lines.append(f"rows in {self.rows_in} = rows out {self.rows_out}: {check}")
        errors = {}
        for d in self.detectors:
            for status, n in d.status_counts.items():
                if status != "ok":
                    errors[status] = errors.get(status, 0) + n
        if errors:
            lines.append("errors by status: " + ", ".join(f"{k}={v}" for k, v in sorted(errors.items())))
        lines.append(
            f"throughput {self.throughput:.2f} rows/s ({self.total('scored_now')} rows in {self.scoring_s:.1f}s; "
            f"run total {self.elapsed_s:.1f}s)"
        )
        lines.append(f"results  {self.results_url}")
        lines.append(f"masks    {self.masks_url}")
        lines.append(f"run      {self.run_record_url}")
        if self.references:
            n = sum(len(v) for v in self.references.values())
            lines.append(f"k-shot references: {n} items over {len(self.references)} categories")
        return "\n".join(lines)
