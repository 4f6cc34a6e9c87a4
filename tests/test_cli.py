"""The CLI's contract for user mistakes: one clear line, exit code 2, no traceback, nothing half-written."""

import os
import subprocess
import sys

import pytest


def knowpack(*args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "knowpack", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def assert_user_error(result, message):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert message in lines[0]


def test_help_lists_the_stages(tmp_path):
    result = knowpack("--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in ("facts", "probe", "train", "eval", "run", "sweep", "report"):
        assert command in result.stdout


@pytest.mark.parametrize("args, message", [
    (["run", "--config", "missing.yaml"], "missing.yaml: config file not found"),
    (["run", "--preset", "turbo"], "unknown preset 'turbo'"),
    (["run", "train.epoch=3"], "unknown key 'train.epoch'; did you mean 'epochs'"),
    (["run", "model.name=./no/such/model"], "model.name: ./no/such/model does not exist"),
    (["run", "lora.rank=0"], "lora.rank: Input should be greater than or equal to 1"),
    (["report", "nowhere"], "nowhere: no metrics.json"),
])
def test_user_errors(tmp_path, args, message):
    assert_user_error(knowpack(*args, cwd=tmp_path), message)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.json"))


def test_misspelled_key_in_yaml(tmp_path):
    (tmp_path / "c.yaml").write_text("probe:\n  num_prompt: 3\n")
    assert_user_error(knowpack("run", "--config", "c.yaml", cwd=tmp_path),
                      "c.yaml: unknown key 'probe.num_prompt'; did you mean 'num_prompts'")


def test_out_that_is_a_file(tmp_path):
    (tmp_path / "taken").write_text("precious")
    assert_user_error(knowpack("run", "--out", "taken", cwd=tmp_path), "--out taken: is a file")
    assert (tmp_path / "taken").read_text() == "precious"


def test_facts_command_writes_jsonl(tmp_path):
    result = knowpack("facts", "--out", "facts.jsonl", "--max-facts", "30", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len((tmp_path / "facts.jsonl").read_text().splitlines()) == 30
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"fact_id": "x"}\n')
    assert_user_error(knowpack("facts", "--source", "jsonl", str(bad), "--out", "o.jsonl", cwd=tmp_path),
                      "bad.jsonl: columns ['fact_id'] are neither triples")
    assert not (tmp_path / "o.jsonl").exists()
    assert_user_error(knowpack("facts", "--source", "wikidata", "--out", "o.jsonl", cwd=tmp_path),
                      "facts --source: Input should be 'embedded', 'dbpedia-dump', 'sparql'")
    assert_user_error(knowpack("facts", "--max-facts", "0", cwd=tmp_path),
                      "facts --max-facts: Input should be greater than or equal to 1")


def test_facts_command_starts_from_a_run_configs_facts_section(tmp_path):
    (tmp_path / "run.yaml").write_text("facts: {source: synthetic, synthetic_count: 12, max_facts: 10, seed: 3}\n")
    from_file = knowpack("facts", "--config", "run.yaml", "--out", "a.jsonl", cwd=tmp_path)
    assert from_file.returncode == 0, from_file.stderr
    assert len((tmp_path / "a.jsonl").read_text().splitlines()) == 10
    option_wins = knowpack("facts", "--config", "run.yaml", "--max-facts", "4", "--out", "b.jsonl", cwd=tmp_path)
    assert option_wins.returncode == 0, option_wins.stderr
    lines = (tmp_path / "b.jsonl").read_text().splitlines()
    assert len(lines) == 4 and all('"synthetic_' in line for line in lines)
    (tmp_path / "typo.yaml").write_text("facts: {sorce: synthetic}\n")
    assert_user_error(knowpack("facts", "--config", "typo.yaml", "--out", "c.jsonl", cwd=tmp_path),
                      "typo.yaml: unknown key 'facts.sorce'; did you mean 'source'?")
    assert not (tmp_path / "c.jsonl").exists()


def test_missing_benchmark_data_fails_before_any_work(tmp_path):
    result = knowpack("run", "--out", "r", "eval.benchmarks=[truthfulqa]", "eval.truthfulqa_path=nowhere.json",
                      cwd=tmp_path)
    assert_user_error(result, "nowhere.json")
    assert not (tmp_path / "r").exists()
    assert_user_error(knowpack("run", "eval.benchmarks=[mmlu, arc]", cwd=tmp_path), "eval.benchmarks.1")


def test_model_mistakes_fail_before_any_work(tiny_model_dir, tmp_path):
    """Pre-flight: the model resolves, is a causal LM and has the LoRA target modules; nothing is written."""
    from transformers import DistilBertConfig

    DistilBertConfig(dim=32, n_layers=1, n_heads=2, hidden_dim=64).save_pretrained(tmp_path / "encoder")
    cases = [
        (["model.name=nobody/no-such-model"], "model.name: nobody/no-such-model is neither a local folder nor in "
                                              "the Hugging Face cache and the hub did not give it", "HF_HUB_OFFLINE "
                                              "is set: download it first (hf download nobody/no-such-model)"),
        ([f"model.name={tmp_path / 'encoder'}"], "is not a causal language model"),
        ([f"model.name={tiny_model_dir}", "lora.target_modules=[foo]"],
         "lora.target_modules: the model has no module 'foo'; its linear layers are: down_proj, gate_proj"),
    ]
    for overrides, *messages in cases:
        result = knowpack("run", "--out", "r", *overrides, cwd=tmp_path)
        for message in messages:
            assert_user_error(result, message)
        assert not (tmp_path / "r").exists()
