"""The training loop: one process, or one of several under torchrun.

What makes a run reproducible and resumable: the data order is a function of (seed, iteration)
(`DataOrder`), patches of (seed, epoch, item) (the datasets), the learning rate of the iteration
(`learning_rate`), and the random draws inside the network (CAMixer's Gumbel noise) come from each
process's generator, seeded from (seed, rank) and saved with every checkpoint.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from ..data.paired import PairedImages, mix_seed, seed_worker
from ..errors import ConfigError, TrainingError
from ..models import registry
from ..models.base import SRNetwork
from ..models.record import attended_share, mixer_records
from . import checkpoints, distributed
from .ema import EMA
from .logs import CsvLog, TensorBoardLog
from .losses import l1_loss, ws_l1_loss
from .order import DataOrder
from .schedule import learning_rate
from .validation import validate

log = logging.getLogger("detailsr.train")

TRAIN_COLUMNS = ["iteration", "epoch", "lr", "loss", "l1", "ws_l1", "ratio", "attended", "grad_norm",
                 "it_per_s", "seconds"]
VAL_COLUMNS = ["iteration", "dataset", "images", "psnr", "ssim", "l1"]


def train(config: dict[str, Any], resume: bool = False, progress: bool | None = None) -> Path:
    """Run the training `config` describes (see `detailsr.train.config`); returns the run folder.

    resume: continue from the newest checkpoint of the run folder (start afresh when there is none);
    without it a run folder that already holds checkpoints is refused.
    """
    procs = distributed.start(config["train"].get("device"))
    try:
        run_dir = Trainer(config, procs, progress).run(resume)
    except BaseException:
        distributed.stop(wait=False)
        raise
    distributed.stop()
    return run_dir


class Trainer:
    def __init__(self, config: dict[str, Any], procs: distributed.Processes, progress: bool | None) -> None:
        self.config, self.procs = config, procs
        self.settings = config["train"]
        self.run_dir = Path(config["output"]) / str(config["name"])
        self.progress = sys.stderr.isatty() if progress is None else progress
        if self.settings.get("threads"):
            torch.set_num_threads(int(self.settings["threads"]))
        torch.manual_seed(mix_seed(config["seed"], procs.rank))
        self.net = build_network(config).to(procs.device).train()
        self.optimizer = _optimizer(self.net, self.settings["optimizer"])
        self.data = training_data(config)
        self.order = DataOrder(len(self.data), self.settings["batch"], procs.world, procs.rank, config["seed"])
        # DDP gives every process the main process's initial weights; the EMA copies them after that.
        self.model = DistributedDataParallel(self.net) if procs.world > 1 else self.net
        self.ema = EMA(self.net, self.settings["ema"]) if self.settings["ema"] is not None else None
        self.iteration = 0

    # ------------------------------------------------------------------------------------- the run

    def run(self, resume: bool) -> Path:
        self._start(resume)
        train_log, val_log, board = self._logs()
        total = self.settings["iterations"]
        bar = self._bar(total)
        window: list[dict[str, float]] = []
        clock = time.perf_counter()
        try:
            while self.iteration < total:
                epoch, start = self.order.position(self.iteration + 1)
                for items in self._loader(epoch, start):
                    self.iteration += 1
                    window.append(self._step(items))
                    bar.update(1)
                    if self.iteration % self.settings["log_every"] == 0 or self.iteration == total:
                        row = self._summary(window, epoch, time.perf_counter() - clock)
                        clock, window = time.perf_counter(), []
                        bar.set_postfix(loss=f"{row['loss']:.4g}", lr=f"{row['lr']:.3g}")
                        if self.procs.main:
                            train_log.write(row)
                            if board:
                                board.write("train", row, self.iteration)
                    self._periodic(total, val_log, board)
                    if self.iteration >= total:
                        break
        finally:
            bar.close()
            if board:
                board.close()
        return self.run_dir

    def _start(self, resume: bool) -> None:
        saved = checkpoints.saved_iterations(self.run_dir)
        if saved and not resume:
            raise ConfigError(f"{self.run_dir} already holds checkpoints up to iteration {saved[-1]}: "
                              "pass --resume to continue it, or set another name")
        if saved:
            self._restore(saved[-1])
        elif self.procs.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(self.config, sort_keys=False))
        distributed.barrier()

    def _loader(self, epoch: int, start: int) -> DataLoader:
        for dataset in _parts(self.data):
            dataset.seed = self.config["seed"]
            dataset.set_epoch(epoch)
        workers = int(self.config["data"]["workers"])
        # Its own generator: the loader draws a seed per iterator, which must not move the global
        # generator (the network's random draws), or a resumed run would differ from an unbroken one.
        generator = torch.Generator().manual_seed(mix_seed(self.config["seed"], self.procs.rank, epoch))
        return DataLoader(self.data, batch_sampler=self.order.batches(epoch, start), num_workers=workers,
                          worker_init_fn=seed_worker, generator=generator,
                          pin_memory=self.procs.device.type == "cuda")

    # ------------------------------------------------------------------------------ one iteration

    def _step(self, items: Any) -> dict[str, float]:
        lr_value = learning_rate(self.iteration, self.settings["optimizer"]["lr"], self.settings["schedule"],
                                 self.settings["iterations"])
        for group in self.optimizer.param_groups:
            group["lr"] = lr_value
        batch = _batch_dict(items, self.procs.device)
        kwargs = {"condition": batch["condition"]} if "condition" in batch else {}
        sr = self.model(batch["lr"], **kwargs)
        terms = self._losses(sr, batch)
        loss = sum(terms.values())
        self._guard(loss, terms)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = self._clip()
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.net)
        row = {k: float(v.detach()) for k, v in terms.items()}
        row.update(loss=float(loss.detach()), lr=lr_value, grad_norm=grad_norm)
        if any(r.hard_fraction is not None for r in mixer_records(self.net, routed_only=True)):
            row["attended"] = float(attended_share(self.net).detach())
        return row

    def _losses(self, sr: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        weights = self.settings["losses"]
        terms = {}
        if weights.get("l1"):
            terms["l1"] = weights["l1"] * l1_loss(sr, batch["hr"])
        if weights.get("ws_l1"):
            if "top" not in batch:
                raise ConfigError("train.losses.ws_l1 needs ERP training data (data.train type: erp)")
            rows = int(batch["erp_rows"][0])
            terms["ws_l1"] = weights["ws_l1"] * ws_l1_loss(sr, batch["hr"], batch["top"], rows).float()
        for name, value in self.net.auxiliary_losses().items():
            weight = weights.get(name, 1.0)
            if weight:
                terms[name] = weight * value
        if not terms:
            raise ConfigError("train.losses gives every loss the weight 0")
        return terms

    def _guard(self, loss: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        """Stop every process on a NaN/Inf loss, before it reaches the weights or a checkpoint."""
        bad = distributed.all_sum(torch.tensor([0.0 if torch.isfinite(loss) else 1.0], device=loss.device))
        if bad.item() == 0:
            return
        saved = checkpoints.saved_iterations(self.run_dir)
        kept = (f"the last good checkpoint is {checkpoints.model_path(self.run_dir, saved[-1])}" if saved
                else "no checkpoint was saved yet")
        parts = ", ".join(f"{k} {float(v):.4g}" for k, v in terms.items())
        raise TrainingError(f"the loss is not finite at iteration {self.iteration} ({parts}); training stopped, "
                            f"{kept}; lower train.optimizer.lr or set train.clip_grad")

    def _clip(self) -> float:
        """Clip the global gradient norm to train.clip_grad (if set); the norm before clipping, for the log."""
        limit = self.settings["clip_grad"]
        params = [p for p in self.net.parameters() if p.grad is not None]
        return float(torch.nn.utils.clip_grad_norm_(params, math.inf if limit is None else float(limit)))

    # --------------------------------------------------------------------- logs, checks, checkpoints

    def _summary(self, window: list[dict[str, float]], epoch: int, seconds: float) -> dict[str, Any]:
        keys = sorted({k for row in window for k in row})
        sums = torch.tensor([sum(row.get(k, 0.0) for row in window) for k in keys], dtype=torch.float64)
        means = (distributed.all_sum(sums) / (len(window) * self.procs.world)).tolist()
        row: dict[str, Any] = dict(zip(keys, means, strict=True))
        row.update(iteration=self.iteration, epoch=epoch, lr=window[-1]["lr"],
                   it_per_s=len(window) / max(seconds, 1e-9), seconds=seconds)
        return row

    def _periodic(self, total: int, val_log: CsvLog | None, board: TensorBoardLog | None) -> None:
        last = self.iteration == total
        if last or self.iteration % self.settings["checkpoint_every"] == 0:
            self._save()
        every = self.config["val"]["every"]
        if self.config["val"]["datasets"] and (last or (every and self.iteration % every == 0)):
            self._validate(val_log, board)

    def _validate(self, val_log: CsvLog | None, board: TensorBoardLog | None) -> list[dict]:
        settings = self.config["val"]
        net = self.ema.network if self.ema is not None else self.net
        # Validation must not move the global generator: an unbroken run validates where a resumed one may not.
        with torch.random.fork_rng(devices=[]):
            results = validate(net, settings["datasets"], self.config["scale"], settings["protocol"],
                               settings["max_images"], self.procs.rank, self.procs.world)
        for row in results:
            row["iteration"] = self.iteration
            log.info("iteration %d, %s: PSNR %.3f dB, SSIM %.4f, L1 %.5f", self.iteration, row["dataset"],
                     row["psnr"], row["ssim"], row["l1"])
            if self.procs.main and val_log is not None:
                val_log.write(row)
                if board:
                    board.write(f"val/{row['dataset']}", row, self.iteration)
        return results

    def _save(self) -> None:
        rng = distributed.gather(_rng_state(self.procs.device))
        if not self.procs.main:
            return
        weights = {"params": _cpu(self.net.state_dict())}
        if self.ema is not None:
            weights["params_ema"] = _cpu(self.ema.network.state_dict())
        state = {
            "iteration": self.iteration,
            "optimizer": self.optimizer.state_dict(),
            "schedule": {"lr": self.settings["optimizer"]["lr"], **self.settings["schedule"]},
            "data_order": self.order.state(),
            "rng": rng,
            "world": self.procs.world,
        }
        checkpoints.save(self.run_dir, self.iteration, weights, state, self.settings["keep_checkpoints"])

    def _restore(self, iteration: int) -> None:
        weights, state = checkpoints.load(self.run_dir, iteration)
        if state["data_order"] != self.order.state():
            raise ConfigError(f"{self.run_dir}: the training data or batch changed since iteration {iteration} "
                              f"(then {state['data_order']}, now {self.order.state()}); resume needs the same")
        self.net.load_state_dict(weights["params"])
        if self.ema is not None:
            self.ema.network.load_state_dict(weights.get("params_ema", weights["params"]))
        self.optimizer.load_state_dict(state["optimizer"])
        rng = state["rng"]
        if state.get("world") == self.procs.world:
            _set_rng_state(rng[self.procs.rank], self.procs.device)
        else:
            log.warning("resuming %d processes from a run of %d: the network's random draws start afresh",
                        self.procs.world, state.get("world"))
        self.iteration = iteration
        if self.procs.main:
            log.warning("resumed %s at iteration %d", self.run_dir, iteration)

    def _logs(self) -> tuple[CsvLog | None, CsvLog | None, TensorBoardLog | None]:
        if not self.procs.main:
            return None, None, None
        at = self.iteration if self.iteration else None
        train_log = CsvLog(self.run_dir / "train.csv", TRAIN_COLUMNS, at)
        val_log = CsvLog(self.run_dir / "val.csv", VAL_COLUMNS, at)
        board = TensorBoardLog(self.run_dir / "tensorboard") if self.settings["tensorboard"] else None
        return train_log, val_log, board

    def _bar(self, total: int):
        from tqdm import tqdm

        return tqdm(total=total, initial=self.iteration, unit="it", dynamic_ncols=True,
                    disable=not (self.progress and self.procs.main), desc=str(self.config["name"]))


# ------------------------------------------------------------------------------ network and data

def build_network(config: dict[str, Any]) -> SRNetwork:
    """The network to train: `model.arch` from scratch, or started from `model.init`'s weights."""
    model, scale = config["model"], config["scale"]
    hyper = dict(model["config"] or {})
    if model["init"] is None:
        net = registry.build_network(model["arch"], scale, hyper)
    else:
        name, state_dict = registry.read_weights(model["init"])
        found = registry.detect(state_dict)
        if found is None and model["arch"] is None:
            raise ConfigError(f"model.init {name}: no known architecture matches it; set model.arch")
        arch = model["arch"] or found[0]
        base = found[0] if found else None
        if base is not None and base in (arch.replace("-", "_"), registry.DERIVED.get(arch.replace("-", "_"))):
            hyper = {**{k: v for k, v in found[1].items() if k != "scale"}, **hyper}
        net = registry.build_network(arch, scale, hyper)
        registry.load_weights_into(net, state_dict, name, strict=bool(model["init_strict"]))
    if model["ratio"] is not None:
        net.set_ratio(float(model["ratio"]))
    return net.train()


DATASET_KEYS = {"paired": {"type", "hr", "lr", "repeat"}, "erp": {"type", "hr", "repeat", "erp_size"}}


def training_data(config: dict[str, Any]) -> Dataset:
    data, scale = config["data"], config["scale"]
    cache = data["cache"] or str(Path(config["output"]) / "cache")
    parts = [_dataset(entry, scale, data, cache) for entry in data["train"]]
    if len({type(p) for p in parts}) > 1:
        raise ConfigError("data.train mixes ERP and flat datasets; their batches carry different fields")
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


def _dataset(entry: Any, scale: int, data: dict, cache: str) -> Dataset:
    if isinstance(entry, str):
        entry = {"hr": entry}
    if not isinstance(entry, dict) or "hr" not in entry:
        raise ConfigError(f"data.train: each dataset is a folder or a mapping with hr: FOLDER, not {entry!r}")
    kind = entry.get("type", "paired")
    if kind not in DATASET_KEYS:
        raise ConfigError(f"data.train: unknown dataset type {kind!r}; expected {', '.join(DATASET_KEYS)}")
    unknown = set(entry) - DATASET_KEYS[kind]
    if unknown:
        raise ConfigError(f"data.train: a {kind} dataset has no setting {', '.join(sorted(unknown))}")
    repeat = int(entry.get("repeat", 1))
    if kind == "erp":
        from ..data.erp import ERPPatches

        size = tuple(entry.get("erp_size", (1024, 2048)))
        return ERPPatches(entry["hr"], scale, data["patch"], erp_size=size, cache_dir=cache,
                          augment=data["augment"], repeat=repeat)
    return PairedImages(entry["hr"], scale, data["patch"], lr_dir=entry.get("lr"), augment=data["augment"],
                        cache_dir=cache, repeat=repeat)


def _parts(data: Dataset) -> list[Dataset]:
    return list(data.datasets) if isinstance(data, ConcatDataset) else [data]


def _batch_dict(items: Any, device: torch.device) -> dict[str, torch.Tensor]:
    batch = items if isinstance(items, dict) else {"lr": items[0], "hr": items[1]}
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _optimizer(net: SRNetwork, settings: dict[str, Any]) -> torch.optim.Optimizer:
    unknown = set(settings) - {"type", "lr", "betas", "weight_decay"}
    if unknown:
        raise ConfigError(f"train.optimizer has no setting {', '.join(sorted(unknown))}")
    kind = torch.optim.AdamW if settings["type"] == "adamw" else torch.optim.Adam
    params = [p for p in net.parameters() if p.requires_grad]
    return kind(params, lr=float(settings["lr"]), betas=tuple(settings.get("betas", (0.9, 0.99))),
                weight_decay=float(settings.get("weight_decay") or 0.0))


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The generators the network draws from: the CPU one, and the GPU's when training on one."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor] | torch.Tensor, device: torch.device) -> None:
    if isinstance(state, torch.Tensor):  # checkpoints that saved the CPU generator only
        state = {"cpu": state}
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in state.items()}
