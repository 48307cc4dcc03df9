"""Ray job entry point: `ray job submit -- python jobs/fit.py --help`. Same flags as `adray fit`."""

import sys

import _entry  # noqa: F401  (puts the repo on sys.path when run from a Ray working_dir)

from adray.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("fit", sys.argv[1:], prog="jobs/fit.py"))
