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
    if not report["ok"]:
        raise Exit(code=1)




# ── build-kernels ──────────────────────────────────────────────────────────────────────────────────────────────────
@task(help={
    "arch": "CUDA arch with its 'a'/'f' suffix: sm_110a (Thor), sm_100a, sm_90a (default: the target's)",
    "jobs": "parallel nvcc jobs (0: as many as cores and memory allow, ~6.5 GB each)",
    "target": "target whose arch to build for (thor, blackwell, hopper, local)",
    "cutlass_dir": "patched CUTLASS tree (default: the pinned one, materialized and patched in the cache)",
    "wheel_dir": "where the wheel and manifest.json go",
    "in_container": "build inside the target's image (checkout mounted at /src, wheels land here): aarch64 on a Thor",
    "image": "image for --in-container (default: turbo_pi_eval:<target>)",
})
@_friendly
def build_kernels(c, arch=None, jobs=None, target=None, cutlass_dir=None, wheel_dir=None, in_container=False,
                  image=None):
    """Compile cutlass_sm110/ for one arch into a wheel + manifest.json, gated by the SASS check."""
    if in_container:  # the same task, run by the image's Python on the mounted checkout
        from triforce import container

        flags = {"arch": arch, "jobs": jobs, "target": target, "cutlass_dir": cutlass_dir, "wheel_dir": wheel_dir}
        _exit_with(container.build_kernels_in_container(
            image, _cfg(c, "build", "target", target), flags, src_dir=os.path.dirname(os.path.abspath(__file__))))
        return
    from triforce import kernels as stage

    result = stage.build(arch=_cfg(c, "build", "arch", arch), jobs=int(_cfg(c, "build", "jobs", jobs)),
                         target=_cfg(c, "build", "target", target), cutlass_dir=_cfg(c, "build", "cutlass_dir", cutlass_dir),
                         wheel_dir=_cfg(c, "build", "wheel_dir", wheel_dir))
    print("\n".join(stage.describe(result)))

@task(help={"target": "target whose arch to compile the engine's Triton kernels for (thor, blackwell, hopper)"})
@_friendly
def check_triton(c, target=None):
    """Compile every Triton kernel of the engine for the target's arch (no GPU needed) and gate its SASS."""
    from triforce import report, triton_gate

    name = _cfg(c, "build", "target", target)
    results = triton_gate.gate_target(name)
    report.print_table(f"engine Triton kernels compiled for {name} ({results[0].arch}): all pass",
                       ["kernel", "arch", "SASS instructions", "tensor-core opcodes", "compile s"], triton_gate.describe(results))

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


# ── serve ──────────────────────────────────────────────────────────────────────────────────────────────────────────
@task(help={
    "checkpoint": "openpi checkpoint dir (model.safetensors + assets/), a .safetensors file, or synthetic:<config>",
    "config": "model config (pi05_libero, pi05_droid, pi05_tiny); its client keys are in triforce/data/io_specs.toml",
    "plan": "ref (fp32 eager, CPU or GPU), a (bf16 CUDA graph), b (quantized)",
    "device": "torch device (cpu, cuda, cuda:1); default: cuda for plans a/b, the best available for ref",
    "host": "address to listen on (0.0.0.0 serves other machines, as openpi does)",
    "port": "TCP port (0 picks a free one and prints it)",
    "tokenizer": "PaliGemma's paligemma_tokenizer.model; without it a real checkpoint takes token ids only",
    "norm_stats": "norm_stats.json to unnormalize actions with (default: <checkpoint>/assets/<asset_id>/norm_stats.json)",
})
@_friendly
def serve(c, checkpoint=None, config=None, plan=None, device=None, host=None, port=None, tokenizer=None, norm_stats=None):
    """Serve a policy over openpi's websocket protocol (openpi-client, LIBERO and DROID clients) until SIGTERM."""
    from triforce import server as stage

    stats = stage.serve(
        _cfg(c, "serve", "checkpoint", checkpoint), _cfg(c, "serve", "config", config), _cfg(c, "serve", "plan", plan),
        _cfg(c, "serve", "device", device), _cfg(c, "serve", "host", host), _cfg(c, "serve", "port", port),
        _cfg(c, "serve", "tokenizer", tokenizer), _cfg(c, "serve", "norm_stats", norm_stats))
    print(f"stopped: {stats.connections} connections, {stats.requests} requests served, {stats.errors} errors, "
          f"{stats.dropped} dropped (client left while queued)", flush=True)

# ── build-image / up / deploy / validate (the eval container turbo_pi_eval) ────────────────────────────────────────
_HOST_HELP = ("Docker engine: unix://, tcp://, ssh://user@thor-01, or a docker context name (default: DOCKER_HOST or "
              "the current context); give it more than once to run against each")


def _exit_with(code: int) -> None:
    if code:
        raise Exit(code=code)


@task(iterable=["host"], help={
    "target": "target whose image to render/build (thor, blackwell, hopper: triforce/data/targets.toml)",
    "base_image": "base image (default: the target's base_image, e.g. nvcr.io/nvidia/pytorch:25.09-py3)",
    "tag": "image tag (default: turbo_pi_eval:<target>, docker/image.toml)",
    "ca_bundle": "PEM CA bundle pip trusts during the build (needed behind a TLS-intercepting proxy)",
    "print_": "only print the rendered Dockerfile",
    "host": _HOST_HELP,
})
@_friendly
def build_image(c, target=None, base_image=None, tag=None, ca_bundle=None, print_=False, host=None):
    """Render docker/Dockerfile.j2 for a target and build the eval image (classic builder, no cross-builds)."""
    from triforce import container, image

    spec = image.make_spec(_cfg(c, "image", "target", target), _cfg(c, "image", "base_image", base_image),
                           _cfg(c, "image", "tag", tag), _cfg(c, "image", "ca_bundle", ca_bundle))
    if print_:
        print(image.render_dockerfile(spec), end="")
        return
    _exit_with(container.on_hosts(host, lambda engine, log: (image.build_image(engine, spec, log=log), 0)[1]))


@task(iterable=["host"], help={
    "name": "container name",
    "target": "target whose image to run when --image is not given (its default tag)",
    "image": "image to run (default: turbo_pi_eval:<target>)",
    "replace": "remove a same-named container of another image first",
    "checkpoint_cache": "checkpoint cache on the engine's host, mounted at /root/.cache/openpi",
    "reports_dir": "reports folder on the engine's host, mounted at /opt/triforce/reports",
    "kernel_cache": "Triton kernel cache on the engine's host, mounted at /root/.triton/cache (restarts skip compiles)",
    "host": _HOST_HELP,
})
@_friendly
def up(c, name=None, target=None, image=None, replace=False, checkpoint_cache=None, reports_dir=None, kernel_cache=None,
       host=None):
    """Create and start the eval container (nvidia runtime on Thor, GPUs elsewhere); reuse it when already up."""
    from pathlib import Path

    from triforce import container
    from triforce import image as image_stage

    name = _cfg(c, "container", "name", name)
    tag = _cfg(c, "container", "image", image) or image_stage.default_tag(_cfg(c, "container", "target", target))
    cache = os.path.expanduser(_cfg(c, "container", "checkpoint_cache", checkpoint_cache))
    reports = str(Path(_cfg(c, "container", "reports_dir", reports_dir)).resolve())
    kernels = os.path.expanduser(_cfg(c, "container", "kernel_cache", kernel_cache))

    def work(engine, log):
        if engine.is_local:  # remote engines create missing bind sources themselves
            for folder in (cache, reports, kernels):
                os.makedirs(folder, exist_ok=True)
        mounts = {cache: "/root/.cache/openpi", reports: "/opt/triforce/reports", kernels: "/root/.triton/cache"}
        result = container.up(engine, name, tag, mounts, replace=replace, log=log)
        log(f"{result.action} container {result.name} ({result.image}) on {engine.where}; GPU: {result.gpu}")
        return 0

    _exit_with(container.on_hosts(host, work))


@task(iterable=["host", "wheel"], help={
    "container": "the eval container to deploy into",
    "wheel": "wheel file name from the manifest (repeatable; default: every manifest wheel that fits the container)",
    "wheel_dir": "folder with the wheels and manifest.json",
    "dry_run": "check the wheels against the container and say what would be installed; change nothing",
    "host": _HOST_HELP,
})
@_friendly
def deploy(c, container=None, wheel=None, wheel_dir=None, dry_run=False, host=None):
    """Check kernel wheels against the container, install them, run their import checks; roll back on any failure."""
    from triforce import container as container_stage
    from triforce import deploy as stage

    name = _cfg(c, "deploy", "container", container)
    folder = _cfg(c, "deploy", "wheel_dir", wheel_dir)

    def work(engine, log):
        for r in stage.deploy(engine, name, folder, wheel or None, dry_run=dry_run, log=log):
            log(f"{r.action}: {r.package} {r.version} ({r.wheel}), previously {r.previous or 'not installed'}")
        return 0

    _exit_with(container_stage.on_hosts(host, work))


@task(iterable=["host"], help={
    "plan": "validation plan: 0 (environment), a, b (triforce/data/validation.toml); extra script args go after --",
    "local": "run the script on this host (report into --report-dir) instead of in the container",
    "container": "the eval container to run in",
    "report_dir": "where reports are written (locally) or copied back to (from the container)",
    "host": _HOST_HELP + "; with several, reports go to <report-dir>/<host>/",
    "recipe": "plan b: recipe name (triforce/data/recipes.toml) or .toml file (default: auto, Phase 0's roofline)",
})
@_friendly
def validate(c, plan=None, local=False, container=None, report_dir=None, host=None, recipe=None):
    """Run a validation plan's script (in the container, or --local); exit with its code (0 pass, 1 gate, 2 input, 4 no GPU)."""
    import shlex
    from pathlib import Path

    from triforce import container as container_stage
    from triforce import validate as stage

    plan = str(_cfg(c, "validate", "plan", plan))
    extra = shlex.split(c.remainder or "")
    if recipe:
        if plan != "b":
            raise TriforceError(f"--recipe applies to plan b, not plan {plan}")
        extra += ["--recipe", recipe]
    reports = Path(_cfg(c, "validate", "report_dir", report_dir))
    stage.plan_script(plan)  # an unknown plan fails before any engine is contacted
    if local:
        if host:
            raise TriforceError("--local runs on this host: drop --host, or drop --local to run in the container")
        outcome = stage.run_local(plan, extra, reports)
        _print_outcome(outcome, print)
        _exit_with(outcome.exit_code)
        return
    several = len(host or []) > 1
    name = _cfg(c, "validate", "container", container)

    def work(engine, log):
        folder = reports / _safe_name(engine.where) if several else reports
        outcome = stage.run_in_container(engine, name, plan, extra, folder, log=log)
        _print_outcome(outcome, log)
        return outcome.exit_code

    _exit_with(container_stage.on_hosts(host, work))


def _print_outcome(outcome, log):
    files = ", ".join(str(p) for p in outcome.reports) or "none"
    log(f"plan {outcome.plan} on {outcome.where}: exit {outcome.exit_code} ({outcome.meaning}); reports: {files}")


def _safe_name(where: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "_", where).strip("_")


# ── runtime: infer / quantize / bench ──────────────────────────────────────────────────────────────────────────────
@task(help={
    "checkpoint": "checkpoint dir/file, or synthetic:<config> (deterministic random weights in openpi's format)",
    "config": "model config (pi05_libero, pi05_droid, pi05_base, pi05_tiny)",
    "plan": "ref (fp32 eager), a (bf16 one-graph engine, GPU), b (quantized, GPU); default: a with a GPU, else ref",
    "device": "cpu or cuda (the engines need cuda)",
    "recipe": "plan b: recipe name (triforce/data/recipes.toml) or .toml file",
    "seed": "seed of the random observation",
})
@_friendly
def infer(c, checkpoint=None, config=None, plan=None, device=None, recipe=None, seed=0):
    """Run one inference on a random observation; print the action shape and the timing."""
    from triforce import infer as stage

    result = stage.run_once(_cfg(c, "infer", "checkpoint", checkpoint), _cfg(c, "infer", "config", config),
                            plan, device, recipe, int(seed))
    print(stage.describe(result))


@task(help={
    "checkpoint": "bf16 checkpoint dir/file, or synthetic:<config>",
    "config": "model config",
    "recipe": "recipe name (triforce/data/recipes.toml) or .toml file; auto: Phase 0's roofline for this GPU",
    "out": "output directory (must not exist or be empty): model.safetensors + recipe.json",
    "calibration": "observations for activation calibration (>= 1)",
    "device": "where calibration and quantization run (default: cuda if present, else cpu)",
})
@_friendly
def quantize(c, checkpoint=None, config=None, recipe=None, out=None, calibration=None, device=None):
    """Write a quantized checkpoint (per-layer FP8 / INT4 W4A16 / NVFP4) that loads without re-quantizing."""
    from triforce import report as rep
    from triforce.quant.plan_b import quantize_checkpoint

    if not out:
        raise TriforceError("--out is required: the directory the quantized checkpoint is written to")
    result = quantize_checkpoint(_cfg(c, "quantize", "checkpoint", checkpoint), _cfg(c, "quantize", "config", config),
                                 _cfg(c, "quantize", "recipe", recipe), out,
                                 int(_cfg(c, "quantize", "calibration", calibration)), device)
    rep.print_table(f"quantized {result['config']} with recipe {result['recipe']} -> {result['out']}",
                    ["stage", "bf16 MB", "quantized MB", "ratio"],
                    [[s, v["bf16"] / 1e6, v["quantized"] / 1e6, v["ratio"]] for s, v in result["weight_bytes"].items()])
    print(f"layers per precision: {result['precisions']}")


@task(help={
    "plan": "a, b or all: which engines to time beside the fp32 reference",
    "checkpoint": "checkpoint dir/file, or synthetic:<config>",
    "config": "model config",
    "recipe": "plan b recipe",
    "runs": "timed runs after warm-up (>= 50)",
    "out_dir": "where the JSON record goes",
    "server": "also time a round trip through the policy server",
})
@_friendly
def bench(c, plan=None, checkpoint=None, config=None, recipe=None, runs=None, out_dir=None, server=None):
    """Time the fp32 reference, Plan A and Plan B in one run (device events, medians); record bench/results/*.json."""
    from triforce import bench as stage

    result, path = stage.run(_cfg(c, "bench", "checkpoint", checkpoint), _cfg(c, "bench", "config", config),
                             _cfg(c, "bench", "plan", plan), _cfg(c, "bench", "recipe", recipe),
                             int(_cfg(c, "bench", "runs", runs)), _cfg(c, "bench", "out_dir", out_dir),
                             bool(_cfg(c, "bench", "server", server)), "invoke bench " + " ".join(sys.argv[2:]))
    stage.print_summary(result)
    print(f"recorded: {path}")


ns = Collection(doctor, patch_cutlass, build_kernels, check_triton, serve, build_image, up, deploy, validate, infer, quantize, bench)
