"""Train and evaluate fuserank; a thin wrapper over `fuserank train-evaluate`.

    python pipelines/train_evaluate.py --config pipelines/configs/movielens_100k.yaml
"""

import sys

from fuserank.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-evaluate", *sys.argv[1:]]))
