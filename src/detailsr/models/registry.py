"""Find the architecture of a state dict and build the network it fits.

Each family module exposes `detect(state_dict) -> (arch, hyper_parameters) | None` and
`build(arch, config) -> SRNetwork`; this module only asks each family in turn.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import read_state_dict
from ..choices import AUTO_RATIO
from ..errors import CheckpointError, ConfigError
from . import atd, camixer_atd, camixersr, esc, purepass, zoo
from .base import SRNetwork

log = logging.getLogger(__name__)

# camixer_atd before atd: a CAMixer-ATD-light state dict holds every ATD-light key too.
FAMILIES = (camixersr, camixer_atd, atd, esc, purepass)

# Architectures built on another's weights: derived -> base. Loading a base checkpoint with
# `arch=<derived>` builds the derived network and loads the base weights into it strictly; only
# parameters the derived network adds (its `new_parameter_keys()`, none for pp_atd_light) may be
# absent: they keep their initialisation, are logged, and are listed in `net.initialised_keys`.
DERIVED = {"pp_atd_light": "atd_light", "camixer_atd_light": "atd_light"}

# Settings that are not hyper-parameters of the weights: applied after building.
RUNTIME_OPTIONS = ("ratio", "stochastic", "attn_type", "routing", "pure_threshold")


def detect(state_dict: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, Any]] | None:
    for family in FAMILIES:
        found = family.detect(state_dict)
        if found is not None:
            return found
    return None


def known_architectures() -> list[str]:
    return sorted({e.arch for e in zoo.ENTRIES})


def load_model(source: str | Path | Mapping | None = None, **overrides: Any) -> SRNetwork:
    """A network in eval mode from a zoo name, a checkpoint path or a state dict (None: default).

    `overrides`: `arch=` to insist on an architecture, or to build a derived one on its base's
    weights (`arch="pp-atd-light"` or `"camixer-atd-light"` on an ATD-light checkpoint; see `DERIVED`);
    hyper-parameters that shapes cannot tell; runtime options `ratio` (CAMixer models: "auto" unless
    given), `stochastic` (the official random K of CAMixer), `attn_type`, and for CAMixerSR `routing`
    ("learned" or "purepass") with its `pure_threshold`.
    """
    name, state_dict, entry_arch = _resolve(source)
    runtime = {k: overrides.pop(k) for k in RUNTIME_OPTIONS if k in overrides}
    wanted_arch = overrides.pop("arch", None) or entry_arch
    wanted_arch = None if wanted_arch is None else str(wanted_arch).replace("-", "_")
    found = detect(state_dict)
    if found is None:
        sample = ", ".join(list(state_dict)[:4])
        raise CheckpointError(
            f"{name}: no known architecture matches its keys (first keys: {sample}); "
            f"expected a checkpoint of one of: {', '.join(known_architectures())}"
        )
    arch, config = found
    derived = DERIVED.get(wanted_arch) == arch
    if derived:
        arch = wanted_arch
    elif wanted_arch is not None and wanted_arch != arch:
        raise CheckpointError(f"{name} holds a {arch} network ({_describe(config)}), not a {wanted_arch}")
    net = _build(arch, {**config, **overrides}, name)
    if derived:
        _load_derived(net, state_dict, name)
    else:
        _load_strict(net, state_dict, name)
    net.eval()
    _apply_runtime(net, runtime)
    return net


def build_untrained(name: str, **runtime: Any) -> SRNetwork:
    """The architecture of zoo model `name` with random weights, in eval mode.

    For measuring cost (FLOPs, latency, memory) without the checkpoint; never for images.
    """
    entry = zoo.get(name)
    if entry is None:
        raise CheckpointError(f"{name} is not a zoo model (see `detailsr models`)")
    torch.manual_seed(0)
    net = _build(entry.arch, dict(entry.config), name)
    net.eval()
    _apply_runtime(net, runtime)
    return net


def build_network(arch: str, scale: int, config: Mapping[str, Any] | None = None) -> SRNetwork:
    """A freshly initialised network of `arch` (a family's architecture name such as "camixersr" or
    "esc"; variants are hyper-parameters) for `scale`, in training mode: for training from scratch."""
    return _build(str(arch).replace("-", "_"), {**(config or {}), "scale": scale}, str(arch)).train()


def read_weights(source: str | Path | Mapping) -> tuple[str, dict[str, torch.Tensor]]:
    """(name, state dict) of a zoo name, a checkpoint file or a state dict, as `load_model` reads it."""
    name, state_dict, _ = _resolve(source)
    return name, state_dict


def load_weights_into(net: SRNetwork, state_dict: Mapping[str, torch.Tensor], name: str, strict: bool = True) -> None:
    """Weights into a built network: strict (every key, every shape; a derived network keeps its
    new parameters' initialisation), or not: the keys whose shapes fit, the others reported."""
    if strict:
        if net.arch in DERIVED:
            _load_derived(net, dict(state_dict), name)
        else:
            _load_strict(net, dict(state_dict), name)
        return
    own = net.state_dict()
    fitting = {k: v for k, v in state_dict.items() if k in own and own[k].shape == v.shape}
    net.load_state_dict(fitting, strict=False)
    skipped = [k for k in own if k not in fitting]
    net.initialised_keys = skipped
    if skipped:
        log.warning("%s: %d of %d keys of %s loaded; %d keep their initialisation (missing or other shapes), "
                    "e.g. %s", name, len(fitting), len(own), net.arch, len(skipped), skipped[0])


def _resolve(source) -> tuple[str, dict[str, torch.Tensor], str | None]:
    """(name, state dict, the architecture a zoo entry asks for)."""
    if source is None:
        source = zoo.DEFAULT_MODEL
    if isinstance(source, Mapping):
        return "the given state dict", read_state_dict(source), None
    entry = zoo.get(str(source)) if not Path(source).exists() else None
    if entry is not None:
        return entry.name, read_state_dict(zoo.fetch(entry)), entry.arch
    path = Path(source)
    if not path.exists() and path.suffix == "":
        raise CheckpointError(f"{source} is neither a checkpoint file nor a zoo model (see `detailsr models`)")
    return str(path), read_state_dict(path), None


def _build(arch: str, config: dict, name: str) -> SRNetwork:
    """The network of `arch`; an unknown hyper-parameter is refused before the constructor runs,
    so that an error inside a constructor surfaces as what it is."""
    cls = next((f.ARCHITECTURES[arch] for f in FAMILIES if arch in f.ARCHITECTURES), None)
    if cls is None:
        raise CheckpointError(f"{name}: architecture {arch} has no builder")
    accepted = inspect.signature(cls).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        unknown = sorted(set(config) - set(accepted))
        if unknown:
            raise ConfigError(f"{name}: {arch} has no hyper-parameter {', '.join(unknown)}; "
                              f"it takes {', '.join(accepted)}")
    return cls(**config)


def _load_strict(net: SRNetwork, state_dict: dict, name: str) -> None:
    ignored = getattr(net, "ignored_checkpoint_keys", ())
    state_dict = {k: v for k, v in state_dict.items() if not any(k.endswith(s) for s in ignored)}
    try:
        net.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        missing, unexpected, mismatched = _diff(net.state_dict(), state_dict)
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if mismatched:
            parts.append(f"{len(mismatched)} with other shapes (e.g. {mismatched[0]})")
        raise CheckpointError(
            f"{name} does not fit {net.arch} ({_describe(net.config)}): " + "; ".join(parts or [str(e)])
        ) from e


def _load_derived(net: SRNetwork, state_dict: dict, name: str) -> None:
    """Base weights into a derived network: strict, except that the parameters the derived network
    adds and the base lacks keep their initialisation (reported, and kept in `net.initialised_keys`)."""
    new = getattr(net, "new_parameter_keys", list)()
    own = net.state_dict()
    initialised = [k for k in new if k not in state_dict]
    _load_strict(net, {**state_dict, **{k: own[k] for k in initialised}}, name)
    net.initialised_keys = initialised
    if initialised:
        log.warning("%s: %d keys of %s are not in these %s weights and keep their initialisation "
                    "(train or fine-tune before use), e.g. %s", name, len(initialised), net.arch,
                    DERIVED[net.arch], initialised[0])


def _diff(expected: dict, given: dict) -> tuple[list[str], list[str], list[str]]:
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    mismatched = [
        f"{k} {tuple(given[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in given and given[k].shape != v.shape
    ]
    return missing, unexpected, mismatched


def _apply_runtime(net: SRNetwork, runtime: dict) -> None:
    if "attn_type" in runtime:
        net.set_attention(runtime["attn_type"])
    if "stochastic" in runtime:
        for m in net.modules():
            if hasattr(m, "stochastic"):
                m.stochastic = bool(runtime["stochastic"])
    if runtime.get("routing") is not None or runtime.get("pure_threshold") is not None:
        if not hasattr(net, "set_routing"):
            raise ConfigError(f"{net.arch} offers no choice of routing (CAMixerSR does: learned or purepass)")
        net.set_routing(runtime.get("routing") or net.routing, runtime.get("pure_threshold"))
    if "ratio" in runtime and runtime["ratio"] is not None:
        if not net.content_aware:
            raise ConfigError(f"{net.arch} has no ratio (it is not content-aware)")
        net.set_ratio(runtime["ratio"])
    elif net.routes_by_predictor and not isinstance(net, camixersr.ClassSRCAMixerSR):  # its branch ratios stay
        # measured on Set5 / Set14 / B100 (docs/results.md): "auto" scores as ratio 1 with half the
        # windows attended, and above a fixed 0.5
        net.set_ratio(AUTO_RATIO)


def _describe(config: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in config.items())
