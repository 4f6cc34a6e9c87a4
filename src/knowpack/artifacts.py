"""Typed artifacts: the JSON files the stages hand to each other, as pydantic models.

In:  a run directory's JSON files — ``metrics.json`` (`Metrics`, one model per block: the contract keys
     of DESIGN.md, never renamed), ``train_stats.json`` (`TrainStats`), ``trained_facts.json``
     (`TrainedFacts`), ``benchmarks_base.json`` (`BenchmarkScores`), continual packing's
     ``rounds.json`` (`RoundsFile`) and ``rounds/round-<k>/round.json`` (`RoundRow`) — and a sweep
     directory's ``sweep.json`` (`SweepRuns`), ``runs/<id>/sweep_task.json`` (`SweepTask`) and
     ``runs/<id>/status.json`` (`RunStatus`).
Out: the models, `read_artifact` (a file as its model, or one line naming the file and the first bad
     field) and `checked` / `validated` (a writer's dict checked against its model before it is written).

The files stay exactly what the writers make of plain dicts: the models only read and check them.
Every block keeps keys it does not know (``extra="allow"``: "add more freely"), and a block or key
added after the first runs is optional, so run directories made before it still read and report.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, RootModel, ValidationError

from knowpack.errors import KnowpackError, validation_line

__all__ = ["Answers", "BenchmarkScores", "Block", "Capacity", "ContinualSummary", "Forgetting", "Locality", "Metrics",
           "RoundRow", "RoundsFile", "RunStatus", "Shift", "ShiftExample", "ShiftReasons", "SweepRuns", "SweepTask",
           "TokenShift", "TrainBlock", "TrainStats", "TrainedFacts", "as_metrics", "checked", "parse_artifact",
           "read_artifact", "validated"]

Model = TypeVar("Model", bound=BaseModel)
Share = float | None  # a share of facts / answers / tokens; None when there was nothing to measure


class Block(BaseModel):
    """A JSON object of an artifact: its known keys typed, any other key kept as it is."""

    model_config = ConfigDict(extra="allow")

    def given(self, name: str) -> bool:
        """Whether the file holds the key ``name`` (even as null), not just its default."""
        return name in self.model_fields_set or name in (self.model_extra or {})

    def written(self) -> dict[str, Any]:
        """The keys the file holds, in its order where the model declares them, extras last."""
        return self.model_dump(exclude_unset=True)


# -- metrics.json blocks ------------------------------------------------------------------------------

class Shift(Block):
    """``shift``: knowledge shift on the held-out facts (`knowpack.evaluate.knowledge.knowledge_shift`)."""
    positive: Share
    negative: Share
    transitions: dict[str, dict[str, int]]  # {category before: {category after: facts}}
    n_facts: int | None = None


class Answers(Block):
    """``answers``: refusals and answer diversity of the greedy answers on the held-out facts."""
    refusals_before: int
    refusals_after: int
    unique_before: int
    unique_after: int
    top_after: list[tuple[str, int]]  # (answer, count), most frequent first
    exploded: list[tuple[str, int, int]] = []  # (answer, count before, count after)


class Forgetting(Block):
    """``forgetting``: Kalajdzievski's cross-entropy against the base model on held-out text."""
    ce_vs_base: float
    kl_to_base: float
    perplexity_base: float
    perplexity_after: float
    tokens: int | None = None


class TokenShift(Block):
    """``token_shift`` (URIAL): shares of the tuned model's tokens by their rank under the base model."""
    unshifted: float
    marginal: float
    shifted: float
    mean_kl: float | None
    mean_base_prob: float | None = None
    top_shifted: list[tuple[str, int]] = []
    top_shifted_kinds: list[str | None] | None = None
    tokens: int | None = None
    # Ghosh et al. 2024's measures; runs evaluated before them have only the shares above.
    kl_percentiles: dict[str, float | None] | None = None
    kl_top5_share: float | None = None
    shifted_words: int | None = None
    style: Share = None
    content: Share = None
    copied: Share = None
    copied_content: Share = None
    training_texts: int | None = None
    none_because: dict[str, str] = {}


class TrainBlock(Block):
    """``train``: what the training cost (`knowpack.train.loop.TrainStats`)."""
    steps: int
    tokens: int
    seconds: float
    tokens_per_s: float
    peak_memory_mb: float
    final_loss: float


class ShiftExample(Block):
    fact_id: str
    question: str
    gold: str
    answer_after: str
    shift: str  # "Before->After"
    reasons: list[str]


class ShiftReasons(Block):
    """``shift_reasons``: per likely reason, the held-out facts that shifted positively / negatively."""
    positive: dict[str, int]
    negative: dict[str, int]
    examples: list[ShiftExample] = []


class Locality(Block):
    """``locality``: unchanged share of held-out facts sharing a subject / relation with a trained fact."""
    subject: Share = None
    relation: Share = None
    facts_subject: int | None = None
    facts_relation: int | None = None


class Capacity(Block):
    """``capacity``: bits stored in the trained facts per trainable parameter (`knowpack.evaluate.capacity`)."""
    trainable_params: int
    facts_learned: float | None
    n_facts: int
    facts_with_bits: int
    facts_without_bits: int
    ce_bits_before: float | None
    ce_bits_after: float | None
    bits_stored: float | None
    bits_per_param: float | None
    answer_space_bits: float | None
    bits_before: float | None
    bits_after: float | None
    bits_undefined: str | None = None  # why the bits are None
    note: str | None = None  # which trained facts were left out of the bit counts


class RoundRow(Block):
    """One round of continual packing: a row of ``rounds``, and ``rounds/round-<k>/round.json``."""
    round: int
    new_facts: int
    replayed_facts: int
    train_examples: int
    reliability: Share
    reliability_current: Share
    reliability_earlier: Share
    reliability_by_round: list[Share]
    backward_transfer: float | None
    shift: Shift
    train: TrainBlock
    reliability_by_epoch: list[Share]
    epoch_losses: list[float]
    forgetting: Forgetting | None = None
    capacity: Capacity | None = None


class ContinualSummary(Block):
    """``continual``: the retention matrix (round trained × round probed) and the scalars a sweep table holds."""
    retention: list[list[Share]]
    strategy: str | None = None
    n_rounds: int | None = None
    first_round_after_own: Share = None
    first_round_final: Share = None
    last_round_final: Share = None
    earlier_rounds_final: Share = None
    backward_transfer: float | None = None


class Metrics(Block):
    """``metrics.json``: every block is optional, as an outside adapter's or an older run's file lacks some."""
    adapter: str | None = None  # knowpack eval --adapter: the adapter evaluated (nothing trained here)
    reliability: Share = None
    reliability_by_epoch: list[Share] | None = None
    generalization: Share = None
    shift: Shift | None = None
    answers: Answers | None = None
    benchmarks: dict[str, float | None] | None = None
    benchmarks_base: dict[str, float | None] | None = None
    forgetting: Forgetting | None = None
    token_shift: TokenShift | None = None
    train: TrainBlock | None = None
    n_trained_facts: int | None = None
    n_heldout_facts: int | None = None
    shift_reasons: ShiftReasons | None = None
    locality: Locality | None = None
    capacity: Capacity | None = None
    rounds: list[RoundRow] | None = None
    continual: ContinualSummary | None = None


# -- the other artifacts --------------------------------------------------------------------------

class TrainStats(TrainBlock):
    """``train_stats.json``: the train block plus the per-epoch curves."""
    epoch_losses: list[float] = []
    reliability_by_epoch: list[Share] = []
    epoch_scores: list[Share] | None = None
    resumed_from_epoch: int | None = None


class TrainedFacts(RootModel[list[str]]):
    """``trained_facts.json``: the ids of the Unknown facts packed into the adapter."""


class BenchmarkScores(RootModel[dict[str, float | None]]):
    """``benchmarks_base.json``: the base model's benchmark scores."""


class RoundsFile(Block):
    """``rounds.json``: merged into metrics.json as its ``rounds`` and ``continual`` blocks."""
    rounds: list[RoundRow]
    continual: ContinualSummary


class SweepRuns(Block):
    """``sweep.json``: the run directories of the sweep's current grid, in grid order."""
    runs: list[str]


class SweepTask(Block):
    """``runs/<id>/sweep_task.json``: the grid point, the resolved config and what to run."""
    point: dict[str, Any]
    config: dict[str, Any]  # a `RunConfig` dump, kept as written: the results table flattens it
    until: str
    reuse_from: list[str] = []


class RunStatus(Block):
    """``runs/<id>/status.json``: pending / queued / running / done / failed, with the error and seconds."""
    status: str = "pending"
    error: str | None = None
    seconds: float | None = None


# -- reading and checking -------------------------------------------------------------------------

def parse_artifact(data: Any, model: type[Model], origin: str | Path) -> Model:
    """``data`` (parsed JSON) as ``model``; a `KnowpackError` naming ``origin`` and the first bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise KnowpackError(validation_line(err, str(origin), empty="(top level)")) from err


def read_artifact(path: str | Path, model: type[Model]) -> Model:
    """The JSON file at ``path`` as ``model``, or one line naming the file and its first bad field."""
    from knowpack.jsonio import read_json_file

    path = Path(path)
    if not path.is_file():
        raise KnowpackError(f"{path}: no such file; run the stage that writes it first")
    return parse_artifact(read_json_file(path), model, path)


def validated(data: Any, model: type[Model], name: str) -> Model:
    """A writer's ``data`` as ``model``, before it is written as ``name``: a wrong block fails here, not in a reader.

    A failure is a bug in knowpack, not the user's, so it is a `ValueError` (with its traceback).
    """
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ValueError(validation_line(err, f"{name} about to be written", empty="(top level)")) from err


def checked(data: Any, model: type[BaseModel], name: str) -> Any:
    """``data`` unchanged once it `validated`: writers keep writing their dicts, byte for byte."""
    validated(data, model, name)
    return data


def as_metrics(metrics: Metrics | Mapping[str, Any]) -> Metrics:
    """`Metrics` from a parsed metrics.json (a caller's dict) or as given."""
    return metrics if isinstance(metrics, Metrics) else parse_artifact(metrics, Metrics, "metrics")
