"""Imported first by every script: keep the scripts folder from shadowing the packages.

Python puts a script's own folder first on `sys.path`, so `scripts/distill.py`
would hide the `distill` package; this drops that folder and makes sure the
repository root (for a checkout that is not pip-installed) is importable.
"""

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
if str(_HERE.parent) not in sys.path:
    sys.path.append(str(_HERE.parent))
