"""TrainConfig: one typed training configuration, read from and written to TOML.

One table per concern, like kohya / ai-toolkit configs: [model], [dataset], [network], [train],
[save], [sample], [validation], [track], declared in ``sections.py`` (each field's type, limits and doc, once). The
validator here reports every problem at once, naming the dotted field, the value and what is
allowed. A 0 means "pick for me": ``resolved(family)`` fills it in. Whether files and datasets
exist is the trainer's business, not checked here.
"""
from __future__ import annotations

import dataclasses
import datetime
import difflib
import importlib.util
import math
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import tomli_w

from ..aspect_buckets import FAMILIES
from ..atomic import write_text
from ..errors import LoraLabError
from .sections import (
    DatasetSection,
    ModelSection,
    NetworkSection,
    SampleSection,
    SaveSection,
    TrackSection,
    TrainSection,
    ValidationSection,
    show_value,
)

__all__ = ["ConfigError", "DatasetSection", "ModelSection", "NetworkSection", "PACKAGES",
           "SampleSection", "SaveSection", "TrackSection", "TrainConfig", "TrainSection", "ValidationSection",
           "check_package", "default_toml"]


class ConfigError(LoraLabError):
    """A training config that cannot be used; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class TrainConfig:
    """A whole training run's settings; build one with from_dict / load, not by hand."""
    model: ModelSection
    dataset: DatasetSection
    network: NetworkSection = field(default_factory=NetworkSection)
    train: TrainSection = field(default_factory=TrainSection)
    save: SaveSection = field(default_factory=SaveSection)
    sample: SampleSection = field(default_factory=SampleSection)
    validation: ValidationSection = field(default_factory=ValidationSection)
    track: TrackSection = field(default_factory=TrackSection)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Validate ``d`` (as TOML parses it); raise ConfigError listing every problem."""
        return _validate(d)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainConfig:
        """Read and validate a TOML file; every problem line starts with the path."""
        p = Path(path)
        if p.is_dir():
            raise ConfigError(f"{p}: is a directory, not a TOML config file")
        try:
            data = p.read_bytes()
            d = tomllib.loads(data.decode("utf-8-sig"))  # tolerate the BOM Windows editors add
        except FileNotFoundError:
            raise ConfigError(f"{p}: no such file (`lora-lab train --init` writes a starter)") from None
        except OSError as e:
            raise ConfigError(f"{p}: cannot read it ({e.strerror})") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{p}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start});"
                              " save it as UTF-8") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{p}: invalid TOML: {e}") from None
        try:
            return _validate(d)
        except ConfigError as e:
            raise ConfigError([f"{p}: {line}" for line in e.problems]) from None

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain TOML-ready data; ``from_dict(cfg.to_dict()) == cfg``."""
        return {name: {f.name: _plain(getattr(getattr(self, name), f.name)) for f in fields(section)}
                for name, section in _SECTIONS.items()}

    def write(self, path: str | os.PathLike) -> Path:
        """Validate, then write TOML atomically (creating the folder); return the path.

        Not named ``save``: that is the [save] table's attribute.
        """
        self.validate()
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        write_text(p, "# lora_lab training config\n" + tomli_w.dumps(self.to_dict()))
        return p

    def validate(self) -> TrainConfig:
        """Check a config built or changed in Python (dataclasses.replace); return it validated."""
        return _validate(self.to_dict())

    def apply_overrides(self, items: list[str]) -> TrainConfig:
        """Apply CLI ``TABLE.KEY=VALUE`` strings; VALUE is a TOML value, else a bare string."""
        d, problems = self.to_dict(), []
        for item in items:
            key, eq, text = item.partition("=")
            table, _, name = key.strip().partition(".")
            if eq and table and not name and table not in _SECTIONS:  # lr=1e-4: say which table holds it
                problems.append(_unknown(None, table, text))
            elif not (eq and name):
                problems.append(f"{item!r}: an override is TABLE.KEY=VALUE, e.g. train.lr=1e-4")
            else:
                value = _parse_value(text.strip())
                if _HINTS.get(table, {}).get(name) == tuple[str, ...] and isinstance(value, str):
                    value = [value]  # sample.prompts="a cat" means one prompt
                target = d.setdefault(table, {})
                if isinstance(target, dict):
                    target[name] = value
        if problems:
            raise ConfigError(problems)
        return _validate(d)

    def resolved(self, family: str) -> TrainConfig:
        """A copy for ``family`` with every "0 = pick for me" filled in, validated again. Default
        buckets widen to take in a user-set resolution; max_steps stays 0 (it needs the dataset)."""
        if family not in FAMILIES:
            raise ConfigError(f"model.family: {family!r} is not one of {', '.join(FAMILIES)}")
        if self.model.family not in ("auto", family):
            raise ConfigError(f"model.family: {self.model.family!r} does not match the model being"
                              f" trained ({family}); set it to {family!r} or 'auto'")
        default_res, min_side, max_side = FAMILIES[family]
        res, rank, fam = self.dataset.resolution or default_res, self.network.rank, f"the {family} default"
        fills = {"dataset.resolution": (res, fam), "dataset.min_bucket": (min(min_side, res), fam),
                 "dataset.max_bucket": (max(max_side, res), fam),
                 "network.alpha": (float(rank), "same as network.rank"),
                 "network.conv_rank": (rank, "same as network.rank"),
                 "train.text_encoder_lr": (self.train.lr, "same as train.lr"),
                 "sample.width": (res, "same as dataset.resolution"),
                 "sample.height": (res, "same as dataset.resolution")}
        d, notes = self.to_dict(), {}
        for dotted, (value, note) in fills.items():
            table, key = dotted.split(".")
            if d[table][key] == 0:
                d[table][key], notes[dotted] = value, note
        d["model"]["family"] = family
        _check_family(family, self.network, self.sample)
        return _validate(d, notes)


def _check_family(name: str, n: NetworkSection, sample: SampleSection) -> None:
    """What the family cannot train or save, refused before any work."""
    from .families import get_family

    family = get_family(name)
    if n.train_text_encoder and not family.trains_text_encoder:
        raise ConfigError(f"network.train_text_encoder: {family.title}'s text encoder is too large "
                          "to train with a LoRA here; set it to false (the LoRA adapts the transformer)")
    if n.targets == "locon" and not family.conv_targets:
        raise ConfigError(f"network.targets: locon adapts a UNet's convolutions; {family.title} has "
                          "none, use attn or attn_mlp")
    if n.dora and family.file_layout != "kohya":
        raise ConfigError(f"network.dora: DoRA is saved for SD1.5 and SDXL only; turn it off for "
                          f"{family.title}")
    if sample.negative and not family.takes_negative:
        raise ConfigError(f"sample.negative: {family.title}'s pipeline takes no negative prompt (it "
                          "guides against the empty one); leave it empty")


_SECTIONS: dict[str, type] = get_type_hints(TrainConfig)
_HINTS: dict[str, dict[str, Any]] = {name: get_type_hints(cls) for name, cls in _SECTIONS.items()}
_TYPES: dict[Any, tuple[str, Any]] = {  # type -> (its name in messages, its test); a bool is no int
    bool: ("true or false", lambda v: isinstance(v, bool)),
    int: ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    float: ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    str: ("a string", lambda v: isinstance(v, str)),
    tuple[str, ...]: ("a list of strings",
                      lambda v: isinstance(v, (list, tuple)) and all(isinstance(s, str) for s in v)),
}


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _type_problem(hint: Any, v: Any) -> str | None:
    if get_origin(hint) is Literal:
        choices = get_args(hint)
        if isinstance(v, bool) or type(v) is not type(choices[0]) or v not in choices:
            return f"{show_value(v)} is not one of {', '.join(map(str, choices))}"
        return None
    what, test = _TYPES[hint]
    if not test(v):
        return f"{show_value(v)} is not {what}"
    return f"{show_value(v)} is not a finite number" if hint is float and not math.isfinite(v) else None


def _unknown(table: str | None, key: str, value: Any) -> str:
    """The line for a key no section has, with the likeliest key the user meant."""
    if table is not None:
        guess = [f"{table}.{g}" for g in difflib.get_close_matches(key, _HINTS[table], n=1)]
        what, dotted = "unknown key", f"{table}.{key}"
    elif isinstance(value, dict):
        guess, what, dotted = difflib.get_close_matches(key, _SECTIONS, n=1), "unknown table", key
    else:
        guess, what, dotted = [], "unknown key", key
    if not guess:  # maybe the right key in the wrong table: [train] rank = 8
        leaves = {f"{t}.{k}": k for t, hints in _HINTS.items() for k in hints if t != table}
        close = difflib.get_close_matches(key, set(leaves.values()), n=1)
        guess = [dk for dk, k in leaves.items() if close and k == close[0]][:1]
    if guess:
        return f"{dotted}: {what} (did you mean {guess[0]}?)"
    return f"{dotted}: {what}" + (" (keys belong in a table such as [train])" if table is None else "")


def _parse_value(text: str) -> Any:
    """A CLI override's value: TOML if it parses as one value, else the text itself."""
    if "\n" in text:
        return text
    try:
        v = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
    # 2024-01-01 parses as a TOML date; no field takes one, so it was meant as text
    return text if isinstance(v, (datetime.date, datetime.time)) else v


def _validate(d: Any, notes: dict[str, str] | None = None) -> TrainConfig:
    """Build a TrainConfig from TOML data, or raise ConfigError with every problem in it."""
    if not isinstance(d, dict):
        raise ConfigError(f"a training config is a set of tables ([model], [dataset], ...), not {show_value(d)}")
    problems: list[str] = [_unknown(None, k, v) for k, v in d.items() if k not in _SECTIONS]
    bad: set[str] = set()  # fields with their own problem: cross-field checks skip them
    values: dict[str, dict[str, Any]] = {}
    for name, cls in _SECTIONS.items():
        raw = d.get(name, {})
        values[name] = kwargs = {}
        if not isinstance(raw, dict):
            problems.append(f"{name}: {show_value(raw)} is not a table (write it as [{name}])")
            raw = {}
            bad.update(f"{name}.{f.name}" for f in fields(cls))
        problems += [_unknown(name, k, v) for k, v in raw.items() if k not in _HINTS[name]]
        for f in fields(cls):
            dotted, hint = f"{name}.{f.name}", _HINTS[name][f.name]
            kwargs[f.name] = "" if f.default is dataclasses.MISSING else f.default
            if f.name not in raw:
                if f.default is dataclasses.MISSING and dotted not in bad:
                    problems.append(f"{dotted}: required")
                    bad.add(dotted)
                continue
            v = raw[f.name]
            problem = _type_problem(hint, v) or f.metadata["rule"].check(v)
            if problem:
                problems.append(f"{dotted}: {problem}")
                bad.add(dotted)
            else:  # stored as declared (1 -> 1.0, list -> tuple) so round trips compare equal
                kwargs[f.name] = float(v) if hint is float else tuple(v) if isinstance(v, list) else v
    problems += _cross_checks(values, bad, notes or {})
    if problems:
        raise ConfigError(problems)
    return TrainConfig(**{name: cls(**values[name]) for name, cls in _SECTIONS.items()})


def _cross_checks(v: dict[str, dict[str, Any]], bad: set[str], notes: dict[str, str]) -> list[str]:
    """Rules between fields, checked only where each field on its own is fine."""
    out: list[str] = []

    def ok(*names: str) -> bool:  # a field with its own problem was reported already
        return not bad.intersection(names)

    def show(dotted: str) -> str:
        table, key = dotted.split(".")
        note = notes.get(dotted)
        return f"{dotted} ({v[table][key]}{', ' + note if note else ''})"

    ds, tr, sm, md = v["dataset"], v["train"], v["sample"], v["model"]
    res, lo, hi = ds["resolution"], ds["min_bucket"], ds["max_bucket"]
    if lo and res and lo > res and ok("dataset.min_bucket", "dataset.resolution"):
        out.append(f"dataset.min_bucket: {lo} is larger than {show('dataset.resolution')}")
    if hi and res and hi < res and ok("dataset.max_bucket", "dataset.resolution"):
        out.append(f"dataset.max_bucket: {hi} is smaller than {show('dataset.resolution')}")
    if lo and hi and lo > hi and not res and ok("dataset.min_bucket", "dataset.max_bucket"):
        out.append(f"dataset.min_bucket: {lo} is larger than {show('dataset.max_bucket')}")
    if 0 < tr["max_steps"] < tr["warmup_steps"] and ok("train.warmup_steps", "train.max_steps"):
        out.append(f"train.warmup_steps: {tr['warmup_steps']} is more than {show('train.max_steps')}")
    if md["quantize"] != "none" and v["network"]["dora"] and ok("model.quantize", "network.dora"):
        out.append(f"network.dora: DoRA needs the full-precision weights that {show('model.quantize')} "
                   "stores in 8 bits; turn one of them off")
    if sm["every_n_steps"] and not sm["prompts"] and ok("sample.every_n_steps", "sample.prompts"):
        out.append("sample.prompts: at least one prompt is needed when sample.every_n_steps is set"
                   " (or set sample.every_n_steps = 0)")
    return out + _validation_checks(v["validation"], ok)


def _validation_checks(va: dict[str, Any], ok: Any) -> list[str]:
    """One way of choosing validation images at a time, and prompts only with some."""
    given = [f"validation.{k}" for k in ("split", "images", "source") if va[k]]
    if len(given) > 1 and ok(*given):
        return [f"{given[1]}: set only one of validation.split, validation.images and "
                f"validation.source (both {given[0]} and {given[1]} are set)"]
    if va["prompts"] and not given and ok("validation.prompts"):
        return ["validation.prompts: validation needs images too; set validation.split, "
                "validation.images or validation.source (or use sample.prompts)"]
    return []


# what a setting needs installed (the config alone cannot tell): (packages, how to get them, fallback)
PACKAGES: dict[tuple[str, Any], tuple[tuple[str, ...], str, Any]] = {
    ("train.optimizer", "adamw8bit"): (("bitsandbytes",), "pip install 'lora-lab[memory]'", "adamw"),
    ("train.optimizer", "prodigy"): (("prodigyopt",), "pip install prodigyopt", "adamw"),
    ("model.quantize", "int8"): (("torchao",), "pip install 'lora-lab[memory]'", "none"),
    ("model.quantize", "fp8"): (("torchao",), "pip install 'lora-lab[memory]'", "none"),
    # MLflow's client, and what its local store (SQLite) needs
    ("track.mlflow", True): (("mlflow", "sqlalchemy", "alembic"), "pip install 'lora-lab[track]'", False),
    ("track.wandb", True): (("wandb",), "pip install 'lora-lab[track]'", False),
}


def check_package(field: str, value: Any) -> None:
    """Refuse a ``field`` = ``value`` whose packages are not installed."""
    packages, install, fallback = PACKAGES.get((field, value), ((), "", ""))
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        what = f"the {' and '.join(missing)} package" + ("s" if len(missing) > 1 else "")
        raise LoraLabError(f"{field}: {_as_written(value)} needs {what} ({install}); "
                           f"or set it to {_as_written(fallback)}")


def _as_written(v: Any) -> str:
    """A choice as a config holds it: adamw8bit, true."""
    return v if isinstance(v, str) else show_value(v)


def default_toml(base: str, source: str, preset: dict[str, dict[str, Any]] | None = None) -> str:
    """A starter config: every key at its default (or the ``preset``'s value), with a comment
    on what it does and allows."""
    given = {table: dict(values) for table, values in (preset or {}).items()}
    given.setdefault("model", {})["base"] = base
    given.setdefault("dataset", {})["source"] = source
    lines = ["# lora_lab training config. Keys left out take the defaults shown here;",
             "# a 0 means \"pick for me\" (from the model family or a related key)."]
    for name, cls in _SECTIONS.items():
        lines += ["", f"[{name}]"]
        for f in fields(cls):
            hint = _HINTS[name][f.name]
            allowed = (", ".join(map(str, get_args(hint))) if get_origin(hint) is Literal
                       else f.metadata["rule"].bounds())
            lines.append(f"# {f.metadata['doc']}" + (f" [{allowed}]" if allowed else ""))
            value = given.get(name, {}).get(f.name, f.default)
            lines.append(tomli_w.dumps({f.name: _plain(value)}).rstrip("\n"))
    text = "\n".join(lines) + "\n"
    _validate(tomllib.loads(text))  # the starter must itself be a valid config
    return text
