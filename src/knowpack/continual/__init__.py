"""Continual packing: facts arriving in rounds, packed one round after the other.

In:  a `RunConfig` with ``rounds`` (each a mixture: N Unknown facts, paraphrases, known facts, a replay
     share of earlier rounds' facts) and ``continual.strategy`` (``continue``, ``stack``, ``retrain``),
     the run's facts and their categories before training.
Out: in the run directory, ``rounds/plan.json`` (every round's facts, decided before round 1 trains),
     ``rounds/round-<k>/`` per round (what it trained, the model's answers after it, its metrics row),
     and the final state where a single run's train stage leaves it (``adapter/``, ``train_set.jsonl``,
     ``trained_facts.json``, ``train_stats.json``) plus ``rounds.json``: ``metrics.json["rounds"]`` (one
     row per round) and ``metrics.json["continual"]`` (the retention matrix, round trained × round probed).
"""

from knowpack.continual.plan import PLAN, RoundPlan, check_rounds, paraphrases_trained, plan_rounds
from knowpack.continual.rounds import ROUNDS, Rounds, continual_summary, retention_matrix, round_dir
from knowpack.continual.stack import stack_adapters

__all__ = ["PLAN", "ROUNDS", "RoundPlan", "Rounds", "check_rounds", "continual_summary", "paraphrases_trained",
           "plan_rounds", "retention_matrix", "round_dir", "stack_adapters"]
