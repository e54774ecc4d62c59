"""Tune fuserank with Optuna; a thin wrapper over `fuserank tune`.

    python pipelines/tune.py --set tune.n_trials=15
    python pipelines/tune.py --set tune.storage=postgresql://host/optuna   # several workers, one study
"""

import sys

from fuserank.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
