"""Recipes as data (triforce/data/recipes.toml or a user TOML file): the precision of every GEMM layer."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

from ..errors import TriforceError
from ..runtime.config import ModelConfig

PRECISIONS = ("bf16", "fp8", "w4a16", "nvfp4")
GROUPS = ("vision", "prefix_attention", "prefix_mlp", "expert_attention", "expert_mlp")
_GROUP_OF = {("vision", n): "vision" for n in ("qkv", "o", "fc1", "fc2")}
for _stage in ("prefix", "expert"):
    _GROUP_OF.update({(_stage, "qkv"): f"{_stage}_attention", (_stage, "o"): f"{_stage}_attention",
                      (_stage, "gate_up"): f"{_stage}_mlp", (_stage, "down"): f"{_stage}_mlp"})
FAST_ACCUM_STAGES = ("vision", "prefix")    # the stages whose FP8 GEMMs a recipe may ask to accumulate fast
# Roofline stages (roofline.py) -> recipe groups.
_ROOFLINE_STAGE = {"vision": ("vision",), "prefix": ("prefix_attention", "prefix_mlp"), "expert": ("expert_attention", "expert_mlp")}


def layer_ids(cfg: ModelConfig) -> list[str]:
    """Every GEMM layer the engine builds, as '<stage>.<layer>.<name>'."""
    ids = [f"vision.{i}.{n}" for i in range(cfg.vision.depth) for n in ("qkv", "o", "fc1", "fc2")]
    for stage, tower in (("prefix", cfg.prefix), ("expert", cfg.expert)):
        ids += [f"{stage}.{i}.{n}" for i in range(tower.depth) for n in ("qkv", "o", "gate_up", "down")]
    return ids


def group_of(layer_id: str) -> str:
    stage, _, name = layer_id.split(".")
    return _GROUP_OF[(stage, name)]


def recipe_names() -> list[str]:
    return list(_table())


def _table() -> dict:
    return tomllib.loads(resources.files("triforce.data").joinpath("recipes.toml").read_text())


def load_recipe_spec(recipe: str) -> dict:
    """A named recipe from recipes.toml, or a TOML file path."""
    path = Path(recipe).expanduser()
    if path.suffix == ".toml":
        if not path.is_file():
            raise TriforceError(f"recipe file {recipe} does not exist")
        try:
            return {"name": path.stem, **tomllib.loads(path.read_text())}
        except tomllib.TOMLDecodeError as err:
            raise TriforceError(f"recipe file {recipe} is not valid TOML ({err})") from None
    table = _table()
    if recipe not in table:
        raise TriforceError(f"unknown recipe '{recipe}': choose one of {', '.join(table)} or give a .toml file")
    return {"name": recipe, **table[recipe]}


def resolve_recipe(recipe: str, cfg: ModelConfig, auto_recommendation: dict | None = None) -> tuple[dict, tuple]:
    """(layer id -> precision for every GEMM layer, the recipe's checked fp8_fast_accum stages): what a quantized
    checkpoint records. Unknown groups, layers, precisions or stages are errors."""
    spec = load_recipe_spec(recipe)
    groups = {g: "bf16" for g in GROUPS}
    if spec["name"] == "auto":
        if auto_recommendation is None:
            raise TriforceError("recipe 'auto' needs Phase 0's roofline recommendation (a GPU to measure)")
        for stage, precision in auto_recommendation.items():
            for g in _ROOFLINE_STAGE[stage]:
                groups[g] = precision
    unknown = set(spec) - set(GROUPS) - {"name", "description", "overrides", "fp8_fast_accum"}
    if unknown:
        raise TriforceError(f"recipe '{spec['name']}' names unknown stage(s) {sorted(unknown)}: stages are {', '.join(GROUPS)}")
    groups.update({g: spec[g] for g in GROUPS if g in spec})
    ids = layer_ids(cfg)
    plan = {lid: groups[group_of(lid)] for lid in ids}
    overrides = spec.get("overrides", {})
    bad_layers = sorted(set(overrides) - set(ids))
    if bad_layers:
        raise TriforceError(f"recipe '{spec['name']}' overrides unknown layer(s) {bad_layers[:5]} (ids look like 'prefix.3.gate_up')")
    plan.update(overrides)
    for lid, precision in plan.items():
        if precision not in PRECISIONS:
            raise TriforceError(f"recipe '{spec['name']}': unknown precision '{precision}' for {lid} (choose {', '.join(PRECISIONS)})")
        if precision == "w4a16" and lid.startswith("vision."):
            raise TriforceError(f"recipe '{spec['name']}': w4a16 for {lid} is not supported (SigLIP's LayerNorm has no "
                                f"place for AWQ scales); use fp8, nvfp4 or bf16 for vision")
    return plan, fast_accum_stages(spec, plan)      # a bad one is refused here, before any calibration


def fast_accum_stages(spec: dict, plan: dict) -> list:
    """The recipe's fp8_fast_accum stages, checked against its resolved plan: known stages that run FP8 layers."""
    stages = spec.get("fp8_fast_accum", [])
    if not isinstance(stages, list) or not all(isinstance(s, str) for s in stages):
        raise TriforceError(f"recipe '{spec['name']}': fp8_fast_accum must be a list of stage names, got {stages!r}")
    unknown = sorted(set(stages) - set(FAST_ACCUM_STAGES))
    if unknown:
        raise TriforceError(f"recipe '{spec['name']}': fp8_fast_accum names unknown stage(s) {unknown}: stages are "
                            f"{', '.join(FAST_ACCUM_STAGES)}")
    without = [s for s in stages if not any(p == "fp8" and lid.startswith(f"{s}.") for lid, p in plan.items())]
    if without:
        raise TriforceError(f"recipe '{spec['name']}': fp8_fast_accum lists {', '.join(without)}, which runs no FP8 "
                            f"layer in this recipe")
    return [s for s in FAST_ACCUM_STAGES if s in stages]
