"""glibc keeps freed activations in fragmented heaps unless its mmap threshold is fixed (modules/host_memory.py)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import os, sys, torch
sys.path.insert(0, {root!r})
from modules.host_memory import release_freed_memory
{call}
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
x = torch.ones(2**21); del x  # a freed 8 MiB block: glibc's dynamic threshold rises past 8 MiB
base = rss()
blocks, kept = [], []
for _ in range(40):  # 320 MiB in 8 MiB tensors, as activations are, with small tensors that stay alive between them
    blocks.append(torch.ones(2**21))
    kept.append(torch.ones(2**14))
del blocks
print(release_freed_memory(), round(rss() - base))
"""


def _retained(env: dict, call: str = "release_freed_memory()") -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE.format(root=str(ROOT), call=call)], env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_freed_tensors_go_back_to_the_os_and_the_default_keeps_them():
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("R1_MMAP_THRESHOLD", "MALLOC_MMAP_THRESHOLD_")}
    threshold, retained = _retained(env)
    assert threshold == str(4 * 2**20) and retained < 30  # 320 MiB freed, (almost) all of it returned
    threshold, retained = _retained({**env, "R1_MMAP_THRESHOLD": "0"})
    assert threshold == "None" and retained > 250  # glibc's dynamic threshold: the freed blocks stay resident
    threshold, _ = _retained({**env, "MALLOC_MMAP_THRESHOLD_": "65536"})
    assert threshold == "None"  # the user's own glibc setting is left alone


def test_a_bad_setting_is_one_line_naming_it(monkeypatch):
    import modules.host_memory as hm

    monkeypatch.setattr(hm, "_applied", None)
    for raw, match in (("lots", r"R1_MMAP_THRESHOLD='lots': give a size in bytes"), ("-1", r"R1_MMAP_THRESHOLD=-1")):
        monkeypatch.setenv("R1_MMAP_THRESHOLD", raw)
        with pytest.raises(ValueError, match=match):
            hm.release_freed_memory()
