"""Entry script of the PyInstaller bundle (packaging/zvstudio.spec): runs `zvstudio.cli.main`.

A frozen app has no Python interpreter, so `sys.executable` is the `zvstudio` program itself.
Code that starts a worker with `[sys.executable, "-m", "zvstudio.some.module", ...]` (the
benchmarks do) therefore arrives here: such a call runs that module as `python -m` would.
"""

from __future__ import annotations

import multiprocessing
import sys


def _run() -> int:
    argv = sys.argv
    if len(argv) >= 3 and argv[1] == "-m" and argv[2].startswith("zvstudio."):
        import runpy

        module = argv[2]
        sys.argv = [argv[0], *argv[3:]]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return 0
    from zvstudio.cli import main

    return main()


if __name__ == "__main__":
    multiprocessing.freeze_support()
    sys.exit(_run())
