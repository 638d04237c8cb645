"""Latency and memory of networks, measured interleaved so that configurations share conditions."""

from __future__ import annotations

import os
import resource
import statistics
import threading
import time
from dataclasses import dataclass, field

import torch

from .allocator import release_freed_memory
from .inference import forward_any_size, ratio_setting
from .models.base import SRNetwork


@dataclass
class Case:
    label: str
    net: SRNetwork
    ratio: float | None
    seconds: list[float] = field(default_factory=list)
    peak_bytes: int = 0

    def summary(self, out_pixels: int) -> dict:
        median = statistics.median(self.seconds)
        return {
            "label": self.label,
            "ratio": self.ratio,
            "median_s": median,
            "min_s": min(self.seconds),
            "max_s": max(self.seconds),
            "output_mpix_per_s": out_pixels / median / 1e6,
            "peak_memory_mib": self.peak_bytes / 2**20,
            "runs": len(self.seconds),
        }


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak extra memory of a block: CUDA's allocator statistics, or the process's resident set
    sampled every millisecond on the CPU (torch's CPU allocator keeps no statistics)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return self
        self.base = self._read()
        self.top = self.base
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base
            return
        self.stop.set()
        self.thread.join()
        self.peak = max(self.top, self._read()) - self.base

    def _sample(self) -> None:
        while not self.stop.wait(0.001):
            self.top = max(self.top, self._read())

    @staticmethod
    def _read() -> int:
        try:
            return _rss_bytes()
        except OSError:  # not Linux: the lifetime peak is the best there is
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@torch.inference_mode()
def measure(cases: list[Case], x: torch.Tensor, runs: int = 5, warmup: int = 1) -> None:
    """Warm every case up, then time `runs` rounds, each round running every case once; then one
    untimed run per case measures its peak memory (on the CPU after freed memory went back to the
    system: the process keeps freed memory for speed, which would hide what a forward needs)."""
    for case in cases:
        device = next(case.net.parameters()).device
        with ratio_setting(case.net, case.ratio):
            for _ in range(warmup):
                forward_any_size(case.net, x.to(device))
    for _ in range(runs):
        for case in cases:
            device = next(case.net.parameters()).device
            xd = x.to(device)
            with ratio_setting(case.net, case.ratio):
                start = time.perf_counter()
                forward_any_size(case.net, xd)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                case.seconds.append(time.perf_counter() - start)
    for case in cases:
        device = next(case.net.parameters()).device
        xd = x.to(device)
        release_freed_memory()
        with ratio_setting(case.net, case.ratio), PeakMemory(device) as memory:
            forward_any_size(case.net, xd)
        case.peak_bytes = memory.peak
