"""Shared by jobs/*.py: make the repo importable when a job runs from a Ray working_dir without install."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
