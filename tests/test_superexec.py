"""deploy/superexec.py: what a forked ClientApp inherits, and what it must not."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import torch

from deploy.superexec import preload, reseed
from tests.conftest import REPO


def _draws_of_forked_children(n: int, *, reseeded: bool) -> list[tuple[float, float, int]]:
    """Fork ``n`` children of this process (after seeding its generators) and collect one
    numpy, one torch and one Python draw from each."""
    import random

    np.random.seed(0)
    torch.manual_seed(0)
    random.seed(0)
    draws = []
    for _ in range(n):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: draw, write, leave without running the parent's hooks
            try:
                if reseeded:
                    reseed()
                os.write(write, f"{np.random.normal()} {torch.randn(()).item()} {random.getrandbits(32)}".encode())
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            a, b, c = pipe.read().split()
        os.waitpid(pid, 0)
        draws.append((float(a), float(b), int(c)))
    return draws


def test_forked_children_draw_the_same_numbers_unless_reseeded():
    same = _draws_of_forked_children(3, reseeded=False)
    fresh = _draws_of_forked_children(3, reseeded=True)

    # Without reseeding, every child replays the parent's numpy and torch streams: identical DP
    # noise at every message. (Python's `random` reseeds itself after a fork.)
    assert len({d[:2] for d in same}) == 1
    assert len({d[0] for d in fresh}) == 3 and len({d[1] for d in fresh}) == 3 and len({d[2] for d in fresh}) == 3
    assert all(d[:2] != same[0][:2] for d in fresh)


def test_preload_imports_what_exists_and_skips_the_rest():
    assert preload(["json", "fedtune_no_such_module", "numpy"]) == ["json", "numpy"]


def test_the_command_line_is_flowers_with_preload_added():
    result = subprocess.run([sys.executable, "-m", "deploy.superexec", "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=60, check=False)

    assert result.returncode == 0, result.stderr
    assert "--preload" in result.stdout and "flower-superexec" in result.stdout


def test_the_parent_forgets_fedtune_so_a_child_imports_the_fabs():
    script = ("import sys, deploy.superexec as s; before = 'fedtune' in sys.modules; s.forget_fedtune(); "
              "print(before, any(n == 'fedtune' or n.startswith('fedtune.') for n in sys.modules), "
              "s.SubprocessExecutor.__name__)")

    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60,
                            check=False)

    # it imported fedtune (Flower's internals come through fedtune._flwr_compat), then dropped it,
    # keeping the names it bound
    assert result.stdout.split() == ["True", "False", "SubprocessExecutor"], result.stderr
