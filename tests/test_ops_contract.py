"""One contract for every operator of the registry, and for the package: no import cycles.

For each operator (several settings each): the recipe round-trips through YAML, a structure-only rebuild loaded with
the saved weights gives identical outputs, the modules stay coherent (head counts, attention width, MLP width), and
the cost model's weight bytes equal the bytes the compressed model holds.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from conftest import small_vit
from safetensors.torch import load_file, save_file

from autocomp import Recipe, compress
from autocomp.costmodel import CostModel, describe
from autocomp.hardware import HardwareProfile
from autocomp.measure import weight_nbytes
from autocomp.ops import OPERATORS, LowRank, PruneHeads, PruneMlp, Quantize, ReduceTokens

# Settings per operator; a new operator must add its own here (checked below).
SETTINGS = {
    "prune_heads": [PruneHeads(keep=4), PruneHeads(keep=1, importance="weight_norm")],
    "prune_mlp": [PruneMlp(keep=0.5), PruneMlp(keep=0.75, importance="weight_norm")],
    "low_rank": [LowRank(rank=0.25), LowRank(rank=0.4, layers=("qkv", "fc1"), method="whitened")],
    "reduce_tokens": [ReduceTokens(keep=0.7), ReduceTokens(keep=0.5, method="prune")],
    "quantize": [Quantize(), Quantize(weight_bits=4, group_size=16), Quantize(weight_bits=16),
                 Quantize(weight_bits=8, act_bits=8), Quantize(weight_bits=3, layers=("qkv", "fc1")),
                 Quantize(weight_bits=8, layers=("re:mlp\\..*",))],
}
CASES = [(name, config) for name, configs in SETTINGS.items() for config in configs]
IDS = [f"{name}-{config.tag()}" for name, config in CASES]
PROFILE = HardwareProfile(name="contract", batch_size=2, peak_gflops={"fp32": 100.0, "int8": 200.0},
                          memory_bandwidth_gbs=10.0, memory_gb=8.0, fast_weight_bits={8: "int8"})


def test_every_registered_operator_has_contract_settings():
    assert set(SETTINGS) == set(OPERATORS)
    for name, configs in SETTINGS.items():
        assert all(type(c) is OPERATORS[name].config_cls for c in configs)


def _recipe(name, config):
    return Recipe(blocks=({name: config}, {name: config} if name != "reduce_tokens" else {}))


def _compressed(name, config):
    calibration = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    return compress(small_vit(), _recipe(name, config), calibration=calibration)


@pytest.mark.parametrize("name, config", CASES, ids=IDS)
def test_recipe_round_trips_through_yaml(tmp_path, name, config):
    recipe = _recipe(name, config)
    recipe.save(tmp_path / "recipe.yaml")
    assert Recipe.load(tmp_path / "recipe.yaml") == recipe


@pytest.mark.parametrize("name, config", CASES, ids=IDS)
def test_structure_only_rebuild_with_the_saved_weights_gives_identical_outputs(tmp_path, name, config):
    model = _compressed(name, config)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    rebuilt = compress(small_vit(), _recipe(name, config), structure_only=True)
    rebuilt.load_state_dict(load_file(str(tmp_path / "w.safetensors")))
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    assert weight_nbytes(rebuilt) == weight_nbytes(model)


@pytest.mark.parametrize("name, config", CASES, ids=IDS)
def test_modules_stay_coherent(name, config):
    model = _compressed(name, config)
    for block in model.blocks:
        attn, mlp = block.attn, block.mlp
        width = attn.num_heads * attn.head_dim
        assert attn.qkv.out_features == 3 * width and attn.proj.in_features == width
        assert getattr(attn, "attn_dim", width) == width
        assert mlp.fc1.out_features == mlp.fc2.in_features
        assert attn.qkv.in_features == attn.proj.out_features == model.embed_dim
    if name == "prune_heads":
        assert [b.attn.num_heads for b in model.blocks] == [config.keep] * 2
    with torch.no_grad():
        assert model(torch.randn(2, 3, 16, 16)).shape == (2, 5)


@pytest.mark.parametrize("name, config", CASES, ids=IDS)
def test_cost_model_weight_bytes_equal_the_bytes_the_model_holds(name, config):
    predicted = CostModel(description=describe(small_vit()), profile=PROFILE).predict(_recipe(name, config))
    assert predicted.weight_nbytes == weight_nbytes(_compressed(name, config))


def _import_graph() -> dict[str, set[str]]:
    """Module -> the autocomp modules it imports (at any level, TYPE_CHECKING blocks aside), including the
    subpackages an import runs (``autocomp.ops.quantize`` runs ``autocomp/ops/__init__``) unless the importer is
    inside that subpackage."""
    root = Path(__file__).resolve().parents[1] / "autocomp"
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                node.body = []
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + [base]).strip(".")
                targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
        edges = set()
        for target in (t for t in targets if t.startswith("autocomp")):
            pieces = target.split(".")
            for end in range(2, len(pieces) + 1):
                parent = ".".join(pieces[:end])
                inside = name == parent or name.startswith(parent + ".")
                if parent in modules and parent != name and (end == len(pieces) or not inside):
                    edges.add(parent)
        graph[name] = edges
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_package_import_graph_has_no_cycle():
    graph = _import_graph()
    assert {"autocomp.recipe", "autocomp.ops.quantize", "autocomp.ops.qat"} <= set(graph)
    assert "autocomp.ops.quantize" in graph["autocomp.ops.qat"]  # the walker sees imports
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
