"""Process memory settings: the kernel caches' bound, and the environment's own setting winning."""

import os
import subprocess
import sys

SHOW = (
    "import os; from detailsr.allocator import bound_kernel_caches; bound_kernel_caches(); "
    "print(os.environ['LRU_CACHE_CAPACITY'], os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'])"
)


def run_with(env_extra: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("LRU_CACHE_CAPACITY", "ONEDNN_PRIMITIVE_CACHE_CAPACITY")}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", SHOW], env=env, capture_output=True, text=True, check=True).stdout


def test_kernel_caches_are_bounded_unless_the_environment_says_otherwise():
    assert run_with({}).split() == ["64", "64"]
    assert run_with({"LRU_CACHE_CAPACITY": "7"}).split() == ["7", "64"]
