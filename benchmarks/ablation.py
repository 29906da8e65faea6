"""The paper's ablation (Table 5) at small scale: a thin wrapper around ``jdrl ablate``.

``python benchmarks/ablation.py ARGS`` is ``jdrl ablate ARGS`` (see ``jdrl.ablation`` for what it
trains, measures and writes). The tables in ``benchmarks/RESULTS.md`` came from::

    jdrl ablate --out runs/ablation --epochs 12 --threads 1 --device cpu
    jdrl ablate --out runs/ablation30 --data runs/ablation/data --epochs 30 --threads 1 --device cpu \\
        --variants l1,no_cycle,no_mask,no_reblur,no_kpn,no_wpn,unet_eq1
    jdrl ablate --out runs/ablation30 --data runs/ablation/data --epochs 30 --threads 1 --device cpu \\
        --variants l1,unet_eq1 --seeds 1
"""

from __future__ import annotations

import sys

from jdrl.cli import main

if __name__ == "__main__":
    sys.exit(main(["ablate", *sys.argv[1:]]))
