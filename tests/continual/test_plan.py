"""Round planning: disjoint rounds, replay, retrain's cumulative sets, and one clear line for each bad input."""

from __future__ import annotations

import pandas as pd
import pytest

from knowpack.config import load_config
from knowpack.continual import check_rounds, paraphrases_trained, plan_rounds
from knowpack.errors import KnowpackError
from knowpack.facts.schema import Fact


def make_facts(unknown: int = 12, known: int = 6) -> tuple[list[Fact], pd.DataFrame]:
    facts = [Fact(fact_id=f"f{i:02d}", subject=f"Place {i}", relation="capital", object=f"City {i}",
                  question=f"What is the capital of Place {i}?", answer=f"City {i}", aliases=[f"City {i}"],
                  bucket="tail", source="test", paraphrases=[f"Which city is the capital of Place {i}?"])
             for i in range(unknown + known)]
    categories = pd.DataFrame({"fact_id": [f.fact_id for f in facts],
                               "category": ["Unknown"] * unknown + ["HighlyKnown"] * known})
    return facts, categories


def config(*overrides: str):
    return load_config("smoke", overrides=list(overrides))


def test_rounds_are_disjoint_and_replay_draws_earlier_facts():
    facts, categories = make_facts()
    plans = plan_rounds(facts, categories, config("rounds=[{n_unknown: 4}, {n_unknown: 3, replay: 0.5}, "
                                                  "{n_unknown: 2, known_per_fact: 1}]"))
    new = [set(p.new_ids) for p in plans]
    assert [len(n) for n in new] == [4, 3, 2] and not (new[0] & new[1] or new[0] & new[2] or new[1] & new[2])
    assert len(plans[1].replayed_ids) == 2 and set(plans[1].replayed_ids) <= new[0]
    assert {e.kind for e in plans[1].examples} == {"unknown", "replay"} and len(plans[1].examples) == 5
    assert plans[0].replayed_ids == [] and len(plans[0].examples) == 4
    assert [e.kind for e in plans[2].examples].count("known") == 2
    assert plans[1].trained_ids == plans[1].new_ids + plans[1].replayed_ids


def test_first_round_is_the_single_run_mixture():
    from knowpack.train import build_mixture

    facts, categories = make_facts()
    base = config("mixture.n_unknown=5", "mixture.paraphrases_per_fact=1", "mixture.known_per_fact=1")
    single, chosen = build_mixture(facts, categories, base.mixture)
    rounds = base.model_copy(update={"rounds": config("rounds=[{}, {n_unknown: 2}]").rounds})
    first = plan_rounds(facts, categories, rounds)[0]
    assert first.new_ids == chosen and first.examples == single


def test_retrain_trains_every_round_so_far():
    facts, categories = make_facts()
    plans = plan_rounds(facts, categories, config("rounds=[{n_unknown: 3}, {n_unknown: 2}]",
                                                  "continual.strategy=retrain"))
    assert {e.fact_id for e in plans[1].examples} == set(plans[0].new_ids) | set(plans[1].new_ids)
    assert plans[1].trained_ids == plans[0].new_ids + plans[1].new_ids


def test_named_facts_are_kept_and_drawn_rounds_avoid_them():
    facts, categories = make_facts(unknown=6)
    plans = plan_rounds(facts, categories, config("mixture.selection=first",
                                                  "rounds=[{n_unknown: 3}, {fact_ids: [f00, f01]}]"))
    assert plans[1].new_ids == ["f00", "f01"] and plans[0].new_ids == ["f02", "f03", "f04"]


def test_paraphrases_trained_is_the_most_any_round_trains():
    assert paraphrases_trained(config("mixture.paraphrases_per_fact=1")) == 1
    assert paraphrases_trained(config("rounds=[{}, {paraphrases_per_fact: 2}]")) == 2


@pytest.mark.parametrize("overrides, message", [
    (["rounds=[{fact_ids: [f00, f01]}, {fact_ids: [f01]}]"],
     "round 2 (rounds[1]) and round 1 (rounds[0]) both name fact f01; rounds may not overlap in facts"),
    (["rounds=[{fact_ids: [f03, f03]}]"], "round 1 (rounds[0]) twice both name fact f03"),
    (["rounds=[{n_unknown: 3, fact_ids: [f00]}]"], "n_unknown=3 but fact_ids names 1 facts"),
    (["rounds=[{}, {replay: 0.2}]", "continual.strategy=retrain"],
     "round 2 (rounds[1]): replay=0.2 with continual.strategy=retrain"),
    (["rounds=[{}, {}]", "continual.strategy=stack", "train.method=full"],
     "continual.strategy=stack with train.method=full"),
    (["rounds=[{}, {}]", "continual.strategy=stack", "lora.use_dora=true"], "continual.strategy=stack with lora.use_dora"),
    (["rounds=[{}, {}]", "lora.init=pissa"], "continual.strategy=continue with lora.init=pissa"),
])
def test_settings_that_cannot_work_are_refused(overrides, message):
    with pytest.raises(KnowpackError) as caught:
        check_rounds(config(*overrides))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_replay_outside_zero_one_names_the_field():
    for share in ("1.5", "-0.1"):
        with pytest.raises(KnowpackError, match=r"rounds\.1\.replay: Input should be"):
            config(f"rounds=[{{}}, {{replay: {share}}}]")


@pytest.mark.parametrize("overrides, message", [
    (["rounds=[{n_unknown: 8}, {n_unknown: 5}]"],
     "round 2 (rounds[1]): n_unknown=5 needs 13 Unknown facts drawn for the rounds up to it, but the probe found only 12"),
    (["rounds=[{n_unknown: 2}, {fact_ids: [f15]}]"], "round 2 (rounds[1]): fact_ids: f15 is HighlyKnown before training"),
    (["rounds=[{fact_ids: [nope]}]"], "round 1 (rounds[0]): fact_ids: nope is not among the run's facts"),
    (["rounds=[{n_unknown: 2}, {n_unknown: 4, known_per_fact: 2}]"],
     "rounds[1].known_per_fact: needs 8 HighlyKnown facts but the probe found 6"),
    (["rounds=[{n_unknown: 2, paraphrases_per_fact: 2}]"], "rounds[0].paraphrases_per_fact: fact"),
])
def test_too_few_facts_name_the_round(overrides, message):
    facts, categories = make_facts()
    with pytest.raises(KnowpackError) as caught:
        plan_rounds(facts, categories, config(*overrides))
    assert message in str(caught.value)


@pytest.mark.parametrize("overrides, message", [
    (["rounds=[{fact_ids: [a]}, {fact_ids: [a]}]"], "round 2 (rounds[1]) and round 1 (rounds[0]) both name fact a"),
    (["rounds=[{}, {}]", "lora.init=pissa", "train.regularizer=kl"], "train.regularizer=kl with lora.init=pissa"),
])
def test_the_cli_refuses_before_any_work(run_cli, tmp_path, overrides, message):
    result = run_cli("run", "--preset", "smoke", "--out", str(tmp_path / "run"), *overrides)
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
