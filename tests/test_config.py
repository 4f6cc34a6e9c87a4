import pytest

from knowpack.config import PRESETS, RunConfig, load_config, parse_override
from knowpack.errors import KnowpackError


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_loads(preset):
    assert isinstance(load_config(preset), RunConfig)


def test_paper_preset_has_paper_hyperparameters():
    config = load_config("paper")
    assert (config.lora.rank, config.lora.alpha, config.lora.dropout, config.lora.use_rslora) == (1, 2, 0.1, True)
    assert config.lora.target_modules == ["down_proj", "gate_proj", "up_proj"]
    assert (config.train.lr, config.train.epochs, config.train.batch_size) == (1e-3, 10, 16)
    assert (config.probe.num_prompts, config.probe.shots, config.probe.num_samples) == (10, 4, 16)


def test_precedence_preset_file_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.01\n  epochs: 3\n")
    config = load_config("smoke", path, ["train.lr=5e-4", "lora.target_modules=[q_proj, v_proj]"])
    assert config.train.lr == 5e-4 and config.train.epochs == 3
    assert config.facts.max_facts == 60  # from the smoke preset
    assert config.lora.target_modules == ["q_proj", "v_proj"]


def test_override_parsing():
    assert parse_override("a.b.c=1") == {"a": {"b": {"c": 1}}}
    assert parse_override("facts.max_facts=null") == {"facts": {"max_facts": None}}


def test_misspelled_key_names_the_nearest(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.1\n  epoch: 3\n")
    with pytest.raises(KnowpackError, match=r"c.yaml: unknown key 'train.epoch'; did you mean 'epochs'"):
        load_config("default", path)


def test_unknown_section_and_bad_value():
    with pytest.raises(KnowpackError, match="unknown key 'trian'; did you mean 'train'"):
        load_config("default", overrides=["trian.lr=1"])
    with pytest.raises(KnowpackError, match=r"override 'lora.rank=0': lora.rank: Input should be greater"):
        load_config("default", overrides=["lora.rank=0"])
    with pytest.raises(KnowpackError, match="write it as section.key=value"):
        load_config("default", overrides=["lora.rank"])


def test_unknown_preset_and_missing_file(tmp_path):
    with pytest.raises(KnowpackError, match="unknown preset 'smok'; did you mean 'smoke'"):
        load_config("smok")
    with pytest.raises(KnowpackError, match="missing.yaml: config file not found"):
        load_config("default", tmp_path / "missing.yaml")


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lr: [1, 2\n")
    with pytest.raises(KnowpackError, match=r"bad.yaml:\d+: not valid YAML"):
        load_config("default", path)


def test_every_config_field_is_read_by_the_package():
    """A field nobody reads is a lie in the config: each must be read, as that field, outside config.py.

    "Read" is an attribute load on an expression known to hold that field's config class (the rule is in
    `config_reads`): ``config.train.seed`` reads ``train.seed`` and not ``probe.seed``; a ``.seed`` on an
    object whose type cannot be told, or the field's name in a string, reads nothing.
    """
    from config_reads import Reads, all_fields, package_sources

    read = Reads(package_sources()).fields
    unread = [path for path, cls, name in all_fields() if (cls, name) not in read]
    assert not unread, f"config fields never read by the package: {', '.join(unread)}"


def test_a_field_is_read_only_through_its_own_section():
    """The rule of the check above, on made-up code: reads are told apart by the section they go through."""
    from config_reads import Reads

    code = '''
from knowpack.config import ProbeConfig, RunConfig

def uses(config: RunConfig, probe: ProbeConfig, other):
    train = config.train
    train.seed, probe.shots, other.lr, config.eval.heldout_facts
    for round_ in config.rounds:
        round_.replay
    pick(config.model)
    getattr(config.facts.sparql, "timeout")
    "epochs", config.lora.model_dump()
    return fresh().mixture.selection

def fresh() -> RunConfig:
    return RunConfig()

def pick(settings):
    return settings.dtype
'''
    assert Reads({"made-up": code}).fields == {
        ("RunConfig", "train"), ("TrainConfig", "seed"), ("ProbeConfig", "shots"), ("RunConfig", "eval"),
        ("EvalConfig", "heldout_facts"), ("RunConfig", "rounds"), ("RoundConfig", "replay"), ("RunConfig", "model"),
        ("ModelConfig", "dtype"), ("RunConfig", "facts"), ("FactsConfig", "sparql"), ("SparqlConfig", "timeout"),
        ("RunConfig", "lora"), ("RunConfig", "mixture"), ("MixtureConfig", "selection")}


def test_rounds_from_a_yaml_file_and_their_errors(tmp_path):
    path = tmp_path / "rounds.yaml"
    path.write_text("rounds:\n  - {n_unknown: 5}\n  - {n_unknown: 5, replay: 0.2}\ncontinual: {strategy: stack}\n")
    config = load_config("smoke", path)
    assert [r.n_unknown for r in config.rounds] == [5, 5] and config.rounds[1].replay == 0.2
    assert config.continual.strategy == "stack" and load_config("smoke").rounds == []
    with pytest.raises(KnowpackError, match=r"unknown key 'rounds.1.replai'; did you mean 'replay'"):
        load_config("smoke", overrides=["rounds=[{}, {replai: 0.2}]"])
    with pytest.raises(KnowpackError, match=r"continual.strategy: Input should be 'continue', 'stack' or 'retrain'"):
        load_config("smoke", overrides=["continual.strategy=restart"])
