"""TrainConfig: TOML in and out, defaults, every kind of bad input, resolved() and overrides."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
import tomllib

import pytest

from lora_lab import LoraLabError
from lora_lab.training.config import (
    ConfigError,
    DatasetSection,
    ModelSection,
    NetworkSection,
    SaveSection,
    TrainConfig,
    default_toml,
)

MINIMAL = '[model]\nbase = "org/name"\n\n[dataset]\nsource = "cats"\n'


def base(**tables) -> dict:
    """The smallest valid dict, with ``tables`` merged in."""
    d = {"model": {"base": "org/name"}, "dataset": {"source": "cats"}}
    for name, values in tables.items():
        d.setdefault(name, {}).update(values)
    return d


def problems(d: dict) -> list[str]:
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_dict(d)
    assert str(e.value) == "\n".join(e.value.problems)
    return e.value.problems


def one_problem(**tables) -> str:
    found = problems(base(**tables))
    assert len(found) == 1, found
    return found[0]


# --- defaults and round trips ---------------------------------------------------------------

def test_minimal_toml_loads_with_working_defaults(tmp_path):
    path = tmp_path / "train.toml"
    path.write_text(MINIMAL, encoding="utf-8")
    cfg = TrainConfig.load(path)
    assert cfg == TrainConfig(ModelSection(base="org/name"), DatasetSection(source="cats"))
    assert (cfg.model.family, cfg.model.prediction) == ("auto", "auto")
    assert (cfg.dataset.repeats, cfg.dataset.resolution, cfg.dataset.cache_latents) == (1, 0, True)
    assert (cfg.network.rank, cfg.network.alpha, cfg.network.targets) == (16, 0.0, "attn")
    assert (cfg.train.lr, cfg.train.optimizer, cfg.train.scheduler) == (1e-4, "adamw", "constant")
    assert (cfg.save.name, cfg.save.format, cfg.save.keep_last) == ("", "kohya", 3)
    assert (cfg.sample.every_n_steps, cfg.sample.prompts, cfg.sample.steps) == (0, (), 20)


def test_utf8_bom_is_tolerated(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())
    assert TrainConfig.load(path).model.base == "org/name"


def test_round_trip_through_dict_and_toml(tmp_path):
    cfg = TrainConfig.from_dict(base(
        model={"family": "sdxl", "vae": "madebyollin/sdxl-vae-fp16-fix", "prediction": "v_prediction"},
        dataset={"repeats": 5, "resolution": 768, "min_bucket": 320, "max_bucket": 1536, "bucket_step": 32,
                 "flip": True, "trigger": "ohwx", "shuffle_tags": True, "keep_tokens": 1,
                 "caption_dropout": 0.05, "caption_extension": ".caption"},
        network={"rank": 32, "alpha": 16, "targets": "locon", "conv_rank": 8, "dora": True},
        train={"lr": 1, "optimizer": "prodigy", "scheduler": "cosine", "max_steps": 1500,
               "warmup_steps": 100, "mixed_precision": "bf16", "seed": 2**32 - 1, "min_snr_gamma": 5},
        save={"name": "my-lora_v1.2", "format": "diffusers", "every_n_steps": 250, "comment": 'say "hi"\n'},
        sample={"every_n_steps": 250, "prompts": ["ohwx, a cat", "ohwx on a 'bench'"], "width": 832},
    ))
    assert cfg.network.alpha == 16.0 and isinstance(cfg.network.alpha, float)  # an int is a fine float
    assert isinstance(cfg.train.lr, float) and cfg.sample.prompts == ("ohwx, a cat", "ohwx on a 'bench'")
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert isinstance(cfg.save, SaveSection)  # the [save] table; the method is write()
    path = cfg.write(tmp_path / "sub" / "train.toml")  # the folder is created
    assert TrainConfig.load(path) == cfg
    assert [p.name for p in path.parent.iterdir()] == ["train.toml"]  # no temp file left behind
    assert tomllib.loads(path.read_text(encoding="utf-8")) == cfg.to_dict()


def test_save_refuses_an_invalid_config_and_writes_nothing(tmp_path):
    cfg = TrainConfig.from_dict(base())
    bad = dataclasses.replace(cfg, network=dataclasses.replace(cfg.network, rank=0))
    with pytest.raises(ConfigError, match=r"network\.rank: 0 is out of range \(must be 1\.\.1024\)"):
        bad.write(tmp_path / "train.toml")
    assert list(tmp_path.iterdir()) == []


def test_config_is_immutable():
    cfg = TrainConfig.from_dict(base())
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.lr = 1.0


# --- bad input, one kind at a time -----------------------------------------------------------

def test_unknown_table_with_suggestion():
    assert one_problem(trian={"lr": 1e-4}) == "trian: unknown table (did you mean train?)"


def test_unknown_key_with_suggestion():
    assert one_problem(train={"optimiser": "adamw"}) == \
        "train.optimiser: unknown key (did you mean train.optimizer?)"


def test_key_in_the_wrong_table_points_to_the_right_one():
    assert one_problem(train={"rank": 8}) == "train.rank: unknown key (did you mean network.rank?)"
    assert problems({**base(), "lr": 1e-4}) == ["lr: unknown key (did you mean train.lr?)"]


def test_unknown_key_without_any_likely_match():
    assert one_problem(save={"zzzzqqq": 1}) == "save.zzzzqqq: unknown key"


@pytest.mark.parametrize("table, key, value, message", [
    ("train", "batch_size", "two", "train.batch_size: 'two' is not an integer"),
    ("train", "batch_size", 2.0, "train.batch_size: 2.0 is not an integer"),
    ("train", "lr", "1e-4", "train.lr: '1e-4' is not a number"),  # strings are not coerced
    ("train", "lr", float("nan"), "train.lr: nan is not a finite number"),
    ("model", "base", 5, "model.base: 5 is not a string"),
    ("dataset", "flip", "yes", "dataset.flip: 'yes' is not true or false"),
    ("dataset", "flip", 1, "dataset.flip: 1 is not true or false"),
    ("sample", "prompts", "a cat", "sample.prompts: 'a cat' is not a list of strings"),
    ("sample", "prompts", ["a cat", 3], "sample.prompts: ['a cat', 3] is not a list of strings"),
    ("train", "warmup_steps", {"a": 1}, "train.warmup_steps: {'a': 1} is not an integer"),
])
def test_wrong_type(table, key, value, message):
    assert one_problem(**{table: {key: value}}) == message


@pytest.mark.parametrize("table, key", [("network", "rank"), ("train", "epochs"), ("sample", "steps")])
def test_bool_is_not_an_integer(table, key):
    assert one_problem(**{table: {key: True}}) == f"{table}.{key}: true is not an integer"


def test_bool_is_not_a_number_either():
    assert one_problem(train={"lr": False}) == "train.lr: false is not a number"


@pytest.mark.parametrize("table, key, value, message", [
    ("train", "lr", -1, "train.lr: -1 is out of range (must be > 0 and ≤ 1)"),
    ("train", "lr", 0, "train.lr: 0 is out of range (must be > 0 and ≤ 1)"),
    ("train", "lr", 1.5, "train.lr: 1.5 is out of range (must be > 0 and ≤ 1)"),
    ("network", "rank", 2048, "network.rank: 2048 is out of range (must be 1..1024)"),
    ("network", "alpha", -1, "network.alpha: -1 is out of range (must be ≥ 0)"),
    ("train", "seed", 2**32, "train.seed: 4294967296 is out of range (must be 0..4294967295)"),
    ("train", "min_snr_gamma", 0.5, "train.min_snr_gamma: 0.5 is out of range (must be 0 or 1..20)"),
    ("dataset", "caption_dropout", 1.01, "dataset.caption_dropout: 1.01 is out of range (must be 0..1)"),
    ("dataset", "repeats", 0, "dataset.repeats: 0 is out of range (must be 1..10000)"),
    ("dataset", "resolution", 32,
     "dataset.resolution: 32 is out of range (must be 0 or 64..4096, a multiple of 64)"),
    ("dataset", "resolution", 500, "dataset.resolution: 500 is not a multiple of 64"),
    ("sample", "width", 516, "sample.width: 516 is not a multiple of 8"),
    ("sample", "guidance", 31, "sample.guidance: 31 is out of range (must be 0..30)"),
])
def test_out_of_range(table, key, value, message):
    assert one_problem(**{table: {key: value}}) == message


@pytest.mark.parametrize("table, key, value, message", [
    ("network", "targets", "mlp", "network.targets: 'mlp' is not one of attn, attn_mlp, locon"),
    ("model", "family", "SDXL",
     "model.family: 'SDXL' is not one of auto, sd15, sdxl, zimage, flux, chroma, qwenimage, flux2klein"),
    ("train", "optimizer", "lion", "train.optimizer: 'lion' is not one of adamw, adamw8bit, prodigy"),
    ("train", "device", "gpu", "train.device: 'gpu' is not one of auto, cuda, cpu"),
    ("dataset", "bucket_step", 48, "dataset.bucket_step: 48 is not one of 8, 16, 32, 64"),
    ("dataset", "bucket_step", 64.0, "dataset.bucket_step: 64.0 is not one of 8, 16, 32, 64"),
])
def test_bad_choice(table, key, value, message):
    assert one_problem(**{table: {key: value}}) == message


@pytest.mark.parametrize("name", ["my lora", ".hidden", "a/b", "../up", "x" * 101, "end."])
def test_unsafe_save_name(name):
    message = one_problem(save={"name": name})
    assert message.startswith(f"save.name: {name[:20]!r}"[:-1]) and "is not a safe file name" in message


def test_caption_extension_must_look_like_one():
    assert one_problem(dataset={"caption_extension": "txt"}) == \
        "dataset.caption_extension: 'txt' is not a file extension like .txt"


def test_missing_required_keys():
    assert problems({}) == ["model.base: required", "dataset.source: required"]
    assert problems({"model": {}, "dataset": {"source": "cats"}}) == ["model.base: required"]
    assert one_problem(model={"base": ""}) == "model.base: must not be empty"


def test_a_table_that_is_not_a_table():
    assert problems({"model": "org/name", "dataset": {"source": "cats"}}) == \
        ["model: 'org/name' is not a table (write it as [model])"]


def test_every_problem_is_reported_together():
    found = problems({
        "model": {"family": "sd3"},
        "dataset": {"source": "cats", "resolution": 500},
        "network": {"rank": True},
        "train": {"lr": -1, "optimiser": "adamw"},
        "trian": {},
    })
    assert found == [
        "trian: unknown table (did you mean train?)",
        "model.base: required",
        "model.family: 'sd3' is not one of auto, sd15, sdxl, zimage, flux, chroma, qwenimage, flux2klein",
        "dataset.resolution: 500 is not a multiple of 64",
        "network.rank: true is not an integer",
        "train.optimiser: unknown key (did you mean train.optimizer?)",
        "train.lr: -1 is out of range (must be > 0 and ≤ 1)",
    ]


def test_config_error_is_a_lora_lab_error():
    assert issubclass(ConfigError, LoraLabError)


# --- files that cannot be read ---------------------------------------------------------------

def test_invalid_toml_names_the_file_and_the_line(tmp_path):
    path = tmp_path / "train.toml"
    path.write_text(MINIMAL + "\n[train]\nlr = = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        TrainConfig.load(path)
    message = str(e.value)
    assert message.startswith(f"{path}: invalid TOML: ") and "line 8" in message


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.toml: no such file"):
        TrainConfig.load(tmp_path / "nope.toml")


def test_directory(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        TrainConfig.load(tmp_path)


def test_non_utf8_file(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('[model]\nbase = "café"\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as e:
        TrainConfig.load(path)
    assert str(e.value) == f"{path}: not UTF-8 text (byte 0xe9 at offset 19); save it as UTF-8"


def test_load_prefixes_each_problem_with_the_path(tmp_path):
    path = tmp_path / "train.toml"
    path.write_text(MINIMAL + "[train]\nlr = -1\nbatch_size = 0\n", encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        TrainConfig.load(path)
    assert e.value.problems == [
        f"{path}: train.batch_size: 0 is out of range (must be 1..256)",
        f"{path}: train.lr: -1 is out of range (must be > 0 and ≤ 1)",
    ]


# --- rules between fields --------------------------------------------------------------------

def test_buckets_must_contain_the_resolution():
    assert one_problem(dataset={"resolution": 512, "min_bucket": 768}) == \
        "dataset.min_bucket: 768 is larger than dataset.resolution (512)"
    assert one_problem(dataset={"resolution": 1024, "max_bucket": 768}) == \
        "dataset.max_bucket: 768 is smaller than dataset.resolution (1024)"
    assert one_problem(dataset={"min_bucket": 1024, "max_bucket": 512}) == \
        "dataset.min_bucket: 1024 is larger than dataset.max_bucket (512)"
    TrainConfig.from_dict(base(dataset={"resolution": 768, "min_bucket": 768, "max_bucket": 768}))


def test_a_field_with_its_own_problem_is_not_cross_checked_too():
    assert problems(base(dataset={"resolution": 500, "min_bucket": 768})) == \
        ["dataset.resolution: 500 is not a multiple of 64"]


def test_warmup_must_fit_in_max_steps():
    assert one_problem(train={"max_steps": 100, "warmup_steps": 200}) == \
        "train.warmup_steps: 200 is more than train.max_steps (100)"
    TrainConfig.from_dict(base(train={"max_steps": 0, "warmup_steps": 200}))  # steps from epochs
    TrainConfig.from_dict(base(train={"max_steps": 200, "warmup_steps": 200}))


def test_sampling_needs_a_prompt():
    assert one_problem(sample={"every_n_steps": 100}).startswith(
        "sample.prompts: at least one prompt is needed when sample.every_n_steps is set")
    TrainConfig.from_dict(base(sample={"every_n_steps": 100, "prompts": ["a cat"]}))


def test_dora_with_locon_is_allowed():
    cfg = TrainConfig.from_dict(base(network={"dora": True, "targets": "locon"}))
    assert cfg.network.dora and cfg.network.targets == "locon"


# --- resolved() ------------------------------------------------------------------------------

@pytest.mark.parametrize("family, res, lo, hi", [("sd15", 512, 256, 1024), ("sdxl", 1024, 512, 2048)])
def test_resolved_fills_the_family_defaults(family, res, lo, hi):
    cfg = TrainConfig.from_dict(base(network={"rank": 8}, train={"lr": 3e-4}))
    r = cfg.resolved(family)
    assert r.model.family == family
    assert (r.dataset.resolution, r.dataset.min_bucket, r.dataset.max_bucket) == (res, lo, hi)
    assert (r.network.alpha, r.network.conv_rank, r.train.text_encoder_lr) == (8.0, 8, 3e-4)
    assert (r.sample.width, r.sample.height) == (res, res)
    assert r.train.max_steps == 0 and r.save.output_dir == ""  # left for the trainer
    assert cfg.dataset.resolution == 0  # the original is untouched
    assert r.resolved(family) == r
    assert TrainConfig.from_dict(r.to_dict()) == r


def test_resolved_keeps_what_the_user_set():
    cfg = TrainConfig.from_dict(base(
        model={"family": "sdxl"}, dataset={"resolution": 768, "min_bucket": 384},
        network={"rank": 32, "alpha": 1, "conv_rank": 4}, train={"text_encoder_lr": 5e-5},
        sample={"width": 832, "height": 1216}))
    r = cfg.resolved("sdxl")
    assert (r.dataset.resolution, r.dataset.min_bucket, r.dataset.max_bucket) == (768, 384, 2048)
    assert (r.network.alpha, r.network.conv_rank, r.train.text_encoder_lr) == (1.0, 4, 5e-5)
    assert (r.sample.width, r.sample.height) == (832, 1216)


def test_resolved_default_buckets_widen_to_a_user_resolution():
    r = TrainConfig.from_dict(base(dataset={"resolution": 1536})).resolved("sd15")
    assert (r.dataset.min_bucket, r.dataset.max_bucket) == (256, 1536)
    r = TrainConfig.from_dict(base(dataset={"resolution": 128})).resolved("sdxl")
    assert (r.dataset.min_bucket, r.dataset.max_bucket) == (128, 2048)


def test_resolved_reports_a_user_bucket_that_clashes_with_the_family_default():
    cfg = TrainConfig.from_dict(base(dataset={"min_bucket": 768}))
    with pytest.raises(ConfigError) as e:
        cfg.resolved("sd15")
    assert str(e.value) == "dataset.min_bucket: 768 is larger than dataset.resolution (512, the sd15 default)"
    assert cfg.resolved("sdxl").dataset.min_bucket == 768


def test_resolved_refuses_another_family():
    cfg = TrainConfig.from_dict(base(model={"family": "sdxl"}))
    with pytest.raises(ConfigError, match="model.family: 'sdxl' does not match"):
        cfg.resolved("sd15")
    with pytest.raises(ConfigError, match="model.family: 'sd3' is not one of sd15, sdxl"):
        cfg.resolved("sd3")


# --- apply_overrides() -----------------------------------------------------------------------

def test_overrides_parse_toml_values_and_fall_back_to_strings():
    cfg = TrainConfig.from_dict(base())
    new = cfg.apply_overrides([
        "train.lr=2e-4", "network.rank=8", "network.alpha = 4", "dataset.flip=true",
        "model.base=stabilityai/stable-diffusion-xl-base-1.0", "train.mixed_precision=bf16",
        'sample.prompts=["a cat", "a dog"]', "save.comment=made on 2024-01-01", "save.name=2024-01-01",
        "sample.negative=",
    ])
    assert (new.train.lr, new.network.rank, new.network.alpha, new.dataset.flip) == (2e-4, 8, 4.0, True)
    assert new.model.base == "stabilityai/stable-diffusion-xl-base-1.0"
    assert new.train.mixed_precision == "bf16" and new.sample.prompts == ("a cat", "a dog")
    assert (new.save.comment, new.save.name, new.sample.negative) == ("made on 2024-01-01", "2024-01-01", "")
    assert cfg.train.lr == 1e-4  # the original is untouched
    assert cfg.apply_overrides(["sample.prompts=a cat"]).sample.prompts == ("a cat",)
    assert cfg.apply_overrides([]) == cfg


def test_overrides_are_validated_like_the_file():
    cfg = TrainConfig.from_dict(base())
    with pytest.raises(ConfigError) as e:
        cfg.apply_overrides(["train.optimiser=adamw", "network.rank=eight", "network.targets=mlp",
                             "trian.lr=1", "sample.every_n_steps=10"])
    assert e.value.problems == [
        "trian: unknown table (did you mean train?)",
        "network.rank: 'eight' is not an integer",
        "network.targets: 'mlp' is not one of attn, attn_mlp, locon",
        "train.optimiser: unknown key (did you mean train.optimizer?)",
        "sample.prompts: at least one prompt is needed when sample.every_n_steps is set"
        " (or set sample.every_n_steps = 0)",
    ]


def test_malformed_overrides():
    cfg = TrainConfig.from_dict(base())
    with pytest.raises(ConfigError) as e:
        cfg.apply_overrides(["lr=1e-4", "train.lr", "=3", "train=1"])
    assert e.value.problems == [
        "lr: unknown key (did you mean train.lr?)",
        "'train.lr': an override is TABLE.KEY=VALUE, e.g. train.lr=1e-4",
        "'=3': an override is TABLE.KEY=VALUE, e.g. train.lr=1e-4",
        "'train=1': an override is TABLE.KEY=VALUE, e.g. train.lr=1e-4",
    ]


# --- default_toml() --------------------------------------------------------------------------

def test_default_toml_is_a_valid_commented_config(tmp_path):
    text = default_toml("C:\\models\\my \"best\".safetensors", "cats")
    cfg = TrainConfig.from_dict(tomllib.loads(text))
    assert cfg == TrainConfig(ModelSection(base='C:\\models\\my "best".safetensors'),
                              DatasetSection(source="cats"))
    lines = text.splitlines()
    for name, section in cfg.to_dict().items():
        assert f"[{name}]" in lines
        for key in section:  # every key is written, with a comment just above it
            at = next(i for i, line in enumerate(lines) if line.startswith(f"{key} = "))
            assert lines[at - 1].startswith("# ") and len(lines[at - 1]) > 10
    assert "# LoRA rank: bigger learns more detail and makes a bigger file [1..1024]" in lines
    assert any(line.startswith("# ") and line.endswith("[attn, attn_mlp, locon]") for line in lines)
    (tmp_path / "train.toml").write_text(text, encoding="utf-8")
    assert TrainConfig.load(tmp_path / "train.toml") == cfg


def test_init_starts_from_a_preset(cli, tmp_path):
    cli("train", "--init", tmp_path / "xl.toml", "--base", "m", "--dataset", "cats", "--preset",
        "sdxl-lowvram")
    cfg = TrainConfig.load(tmp_path / "xl.toml")
    assert (cfg.model.base, cfg.model.family, cfg.dataset.resolution, cfg.train.optimizer) == (
        "m", "sdxl", 1024, "adamw8bit")
    assert "unknown preset 'sd3'" in cli.fails("train", "--init", tmp_path / "x.toml", "--base", "m",
                                              "--dataset", "cats", "--preset", "sd3")
    assert not (tmp_path / "x.toml").exists()


def test_default_toml_needs_a_base_and_a_source():
    with pytest.raises(ConfigError, match="model.base: must not be empty"):
        default_toml("", "cats")


def test_network_defaults_match_a_section_built_in_python():
    assert TrainConfig.from_dict(base()).network == NetworkSection()


def test_import_stays_light():
    code = "import sys, lora_lab.training.config; print(sorted({'torch', 'diffusers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_public_names_still_import_from_config():
    """The eight tables live in sections.py; config.py re-exports them for existing imports."""
    from lora_lab.training import config, sections

    assert all(hasattr(config, name) for name in config.__all__)
    for name in ("ModelSection", "DatasetSection", "NetworkSection", "TrainSection", "SaveSection",
                 "SampleSection", "ValidationSection", "TrackSection"):
        assert getattr(config, name) is getattr(sections, name)
    assert callable(config.check_package) and callable(config.default_toml)
