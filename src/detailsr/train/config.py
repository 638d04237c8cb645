"""Training configuration: a YAML file over the defaults below, then `key=value` overrides.

Every key the trainer reads is listed in `DEFAULTS`; a key that is not there is refused, so that a
typo ("lerning_rate") fails at once instead of training hours with the default.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

# Values of None mean "not set". Lists of datasets are free-form dicts checked where they are used.
DEFAULTS: dict[str, Any] = {
    "name": None,                 # run folder name (default: the config file's stem)
    "output": "runs",             # run folders are made under this folder
    "seed": 0,
    "scale": None,                # required
    "model": {
        "arch": None,             # a registry architecture (camixersr, esc, atd_light, ...) ...
        "config": {},             # ... and its hyper-parameters (scale comes from `scale`)
        "init": None,             # weights to start from: a checkpoint path or a zoo name
        "init_strict": True,      # False: load the keys whose shapes fit, report the rest
        "ratio": None,            # content-aware networks: the training ratio
    },
    "data": {
        "train": [],              # datasets: {type: paired|erp, hr: DIR, lr: DIR?, repeat: N, ...}
        "patch": 64,              # LR patch side
        "augment": True,          # flips and transposes (ERP: horizontal flips only)
        "cache": None,            # folder for generated LR images (default: <output>/cache)
        "workers": 0,             # DataLoader worker processes per training process
    },
    "val": {
        "datasets": [],           # folders with HR/ and optionally LR_bicubic/X<s>/
        "every": 0,               # iterations between validations (0: only at the end)
        "protocol": "y",          # y | rgb | ws
        "max_images": None,       # first N images of each set (quick checks)
    },
    "train": {
        "iterations": None,       # required
        "batch": 16,              # global batch: split evenly over the processes
        "optimizer": {"type": "adamw", "lr": 5e-4, "betas": [0.9, 0.99], "weight_decay": 0.0},
        "schedule": {"type": "multistep", "milestones": [], "gamma": 0.5, "warmup": 0, "min_lr": 0.0},
        "losses": {"l1": 1.0, "ws_l1": 0.0, "ratio": 1.0},
        "clip_grad": None,        # max global gradient norm
        "ema": 0.999,             # decay of the EMA weights (None: no EMA)
        "checkpoint_every": 1000,
        "keep_checkpoints": 3,    # older ones are deleted (0: keep all)
        "log_every": 100,
        "tensorboard": False,
        "threads": None,          # torch intra-op threads per process
        "device": None,           # cpu | cuda (default: cuda when available)
    },
}

class _Loader(yaml.SafeLoader):
    """YAML with floats as people write them: PyYAML (YAML 1.1) reads `1e-3` as a string."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$|^[-+]?\d[\d_]*\.\d*$|^[-+]?\.\d+$"
               r"|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."),
)


def parse_yaml(text: str):
    return yaml.load(text, Loader=_Loader)


_TYPES = {"optimizer": ("adam", "adamw"), "schedule": ("multistep", "cosine")}


def load_config(path: str | os.PathLike[str] | None, overrides: list[str] = ()) -> dict[str, Any]:
    """The merged, checked configuration of `path` (None: defaults only) with `overrides` applied."""
    config = copy.deepcopy(DEFAULTS)
    if path is not None:
        _merge(config, _read_yaml(Path(path)), str(path))
        if config["name"] is None:
            config["name"] = Path(path).stem
    for item in overrides:
        key, value = _parse_override(item)
        _set(config, key, value)
    check(config)
    return config


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read the config {path}: {e.strerror or e}") from None
    try:
        data = parse_yaml(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of settings, not {type(data).__name__}")
    return data


def _merge(into: dict, given: dict, where: str, prefix: str = "") -> None:
    for key, value in given.items():
        dotted = f"{prefix}{key}"
        if key not in into:
            raise ConfigError(f"{where}: unknown setting {dotted!r}; known here: {', '.join(into)}")
        if isinstance(into[key], dict) and key != "config":
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {dotted} must be a mapping, not {value!r}")
            _merge(into[key], value, where, dotted + ".")
        else:
            into[key] = value


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.iterations=100)")
    try:
        return key.strip(), parse_yaml(text)
    except yaml.YAMLError:
        raise ConfigError(f"override {item!r}: the value is not a YAML value") from None


def _set(config: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = config
    for i, part in enumerate(parents):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"override {dotted}: unknown setting {'.'.join(parents[: i + 1])!r}")
        node = node[part]
    free_form = parents[-1:] == ["config"]  # a network's hyper-parameters are the network's to check
    if not isinstance(node, dict) or (last not in node and not free_form):
        raise ConfigError(f"override {dotted}: unknown setting {dotted!r}")
    node[last] = value


def check(config: dict) -> None:
    """Refuse settings that cannot train, naming the setting."""
    if not isinstance(config["scale"], int) or isinstance(config["scale"], bool) or config["scale"] < 1:
        raise ConfigError(f"scale must be a positive integer, got {config['scale']!r}")
    model = config["model"]
    if model["arch"] is None and model["init"] is None:
        raise ConfigError("model: give model.arch (train from scratch) or model.init (start from weights)")
    train = config["train"]
    _positive_int(train, "iterations", "train.iterations")
    _positive_int(train, "batch", "train.batch")
    _positive_int(config["data"], "patch", "data.patch")
    for section, choices in _TYPES.items():
        kind = train[section].get("type")
        if kind not in choices:
            raise ConfigError(f"train.{section}.type must be one of {', '.join(choices)}, got {kind!r}")
    if not config["data"]["train"]:
        raise ConfigError("data.train lists no training dataset")
    if train["ema"] is not None and not 0.0 <= float(train["ema"]) < 1.0:
        raise ConfigError(f"train.ema must lie in [0, 1) or be null, got {train['ema']!r}")


def _positive_int(section: dict, key: str, name: str) -> None:
    value = section[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
