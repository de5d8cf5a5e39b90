"""Test stand-in for the triforce_kernels package: imports the compiled module and reads the build identity."""

import json
from importlib import resources

from . import _C  # noqa: F401  (the import is the check)


def build_info() -> dict:
    return json.loads(resources.files(__name__).joinpath("build_info.json").read_text())
