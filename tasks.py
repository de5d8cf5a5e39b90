"""Thor Triforce tasks: a thin Invoke layer. Parsing and printing live here; the work lives in `triforce/`.

Every task turns a TriforceError into one line on stderr and a non-zero exit; `--debug` (invoke's own flag, or
TRIFORCE_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import functools
import logging
import os
import sys

from invoke import Collection, Exit, task

from triforce.errors import TriforceError


def _friendly(fn):
    """Run a task body; a TriforceError becomes `error: <message>` and its exit code."""

    @functools.wraps(fn)
    def wrapper(c, *args, **kwargs):
        try:
            return fn(c, *args, **kwargs)
        except TriforceError as err:
            if os.environ.get("TRIFORCE_DEBUG") or logging.getLogger("invoke").isEnabledFor(logging.DEBUG):
                raise
            print(f"error: {err}", file=sys.stderr)
            raise Exit(code=err.exit_code) from None
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            raise Exit(code=130) from None

    return wrapper


def _cfg(c, section: str, key: str, value):
    """A flag's value if given, else the default from invoke.yaml (triforce.<section>.<key>)."""
    if value is not None:
        return value
    return c.config.triforce[section][key]


# ── doctor ─────────────────────────────────────────────────────────────────────────────────────────────────────────
@task(help={"json": "print the report as JSON instead of a table", "target": "target to resolve (thor, blackwell, hopper, local)"})
@_friendly
def doctor(c, json=False, target=None):
    """Check the toolchain, CUTLASS, torch, Docker and GPU, and say how to get what is missing."""
    from triforce import doctor as stage

    report = stage.probe(_cfg(c, "build", "target", target))
    print(stage.to_json(report) if json else stage.to_table(report))



# ── patch-cutlass ──────────────────────────────────────────────────────────────────────────────────────────────────
@task(help={
    "cutlass_dir": "CUTLASS source tree to patch (default: the pinned nvidia-cutlass source, materialized in the cache)",
    "check": "only check: exit 0 when fully patched with the current rules, 1 otherwise",
    "revert": "restore the original files from their .orig backups",
})
@_friendly
def patch_cutlass(c, cutlass_dir=None, check=False, revert=False):
    """Apply the SM110 patch rules (patches/*.toml) to CUTLASS: all or nothing, idempotent, revertible."""
    from triforce import cutlass as stage

    if check and revert:
        raise TriforceError("--check and --revert exclude each other: pass one of them")
    root = stage.resolve(_cfg(c, "cutlass", "cutlass_dir", cutlass_dir), create=not (check or revert))
    if check:
        status = stage.check(root)
        print(f"CUTLASS {status.cutlass_version} at {root}: " + ("fully patched" if status.ok else "NOT fully patched"))
        for problem in status.problems:
            print(f"  {problem}")
        if not status.ok:
            raise Exit(code=1)
    elif revert:
        restored = stage.revert(root, on_file=lambda rel: print(f"  restored {rel}"))
        print(f"reverted {len(restored)} files in {root}" if restored else f"nothing to revert in {root}")
    else:
        print("\n".join(stage.describe(stage.patch(root))))

ns = Collection(doctor, patch_cutlass)
