"""Compare MLflow runs against a baseline; a thin wrapper over `fuserank compare`.

    python pipelines/compare_runs.py --experiment fuserank
    python pipelines/compare_runs.py --runs RUN_A RUN_B --baseline RUN_A
"""

import sys

from fuserank.cli import main

if __name__ == "__main__":
    sys.exit(main(["compare", *sys.argv[1:]]))
