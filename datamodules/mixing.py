"""Several training files, each read in its own format, mixed by weight into one training split.

Each source is normalised on its own (its format, field renames and speaker roles, else the data
module's), so a run can mix formats. The mixture is HF ``datasets.interleave_datasets`` over the
records' positions: the sources are drawn at random with probabilities proportional to their
weights (seeded with the run's seed), each draw taking that source's next record in file order, and
the mixture stops as soon as one source runs out (``first_exhausted``): no record is repeated, the
proportions hold, and the rest of the other sources is left out and counted in the summary.

>>> TrainSource("a.jsonl", weight=3.0).weight
3.0
"""

from dataclasses import dataclass, field, replace

import datasets

from core.record import Record
from datamodules.formats import Format, SpeakerRole
from datamodules.normalize import ConversationSpec, read_records

STOPPING_STRATEGY = "first_exhausted"


@dataclass
class TrainSource:
    """One training file of a mixture (``data.train_path`` as a list)."""

    path: str
    """A .jsonl/.json/.parquet/.csv file, or a hub dataset name."""
    format: Format | None = None
    """This file's record format (default: ``data.format``)."""
    fields: dict[str, str] | None = None
    """This file's field renames (default: ``data.fields``)."""
    roles: dict[str, SpeakerRole] | None = None
    """This file's ShareGPT speaker names → roles (default: ``data.roles``)."""
    weight: float = 1.0
    """Relative share of the mixture: weights 3 and 1 draw three records of the first per one of the second."""


@dataclass
class SourceCount:
    path: str
    record_format: str
    weight: float
    used: int
    available: int


@dataclass
class Mixture:
    records: list[Record]
    counts: list[SourceCount] = field(default_factory=list)
    seed: int = 0

    def summary(self, split: str = "train") -> str:
        parts = [f"{c.path} ({c.record_format}, weight {c.weight:g}) {c.used} of {c.available}" for c in self.counts]
        return (f"[{split}] mixture of {len(self.counts)} sources, seed {self.seed}, stops when the first runs out: "
                + "; ".join(parts) + f" records -> {len(self.records)} records")


def source_spec(source: TrainSource, spec: ConversationSpec) -> ConversationSpec:
    """The data module's spec with what this source sets for itself."""
    return replace(
        spec,
        record_format=source.format or spec.record_format,
        renames=dict(source.fields) if source.fields is not None else spec.renames,
        roles=dict(source.roles) if source.roles is not None else spec.roles,
    )


def check_sources(sources: list[TrainSource]) -> None:
    if not sources:
        raise ValueError("data.train_path is an empty list: give a file, or a list of {path, format, fields, weight}")
    for number, source in enumerate(sources, start=1):
        if not source.weight > 0:
            raise ValueError(f"data.train_path source {number} ({source.path}): weight must be > 0, got {source.weight}")


def mix_records(records_per_source: list[list[Record]], weights: list[float], seed: int) -> list[tuple[int, int]]:
    """(source, row) of each record of the mixture, in order (``datasets.interleave_datasets``)."""
    positions = [datasets.Dataset.from_dict({"source": [number] * len(records), "row": list(range(len(records)))})
                 for number, records in enumerate(records_per_source)]
    total = sum(weights)
    mixed = datasets.interleave_datasets(positions, probabilities=[weight / total for weight in weights], seed=seed,
                                         stopping_strategy=STOPPING_STRATEGY)
    return list(zip(mixed["source"], mixed["row"]))


def read_mixture(sources: list[TrainSource], spec: ConversationSpec, seed: int) -> Mixture:
    """Every source read and validated with its own spec, then mixed by weight."""
    check_sources(sources)
    records_per_source = [read_records(source.path, source_spec(source, spec)) for source in sources]
    order = mix_records(records_per_source, [source.weight for source in sources], seed)
    counts = [SourceCount(source.path, source_spec(source, spec).record_format, source.weight,
                          used=sum(1 for number, _ in order if number == index), available=len(records))
              for index, (source, records) in enumerate(zip(sources, records_per_source))]
    return Mixture([records_per_source[number][row] for number, row in order], counts, seed)
