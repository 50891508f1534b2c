"""The runtime pass under a memory budget on a 224-px ViT: each setting run on the target in a copy of the model cut
to its first block, against each setting run in every block of the whole model, side by side.

    python benchmarks/runtime_pass.py [--model deit_tiny_patch16_224] [--profile hardware_profiles/onnxruntime_cpu.yaml]
                                      [--space search_spaces/vit_all.yaml] [--rounds 1]

Under a memory budget nothing is timed before the trials, but on a runtime each setting of the search space is
exported and run there once (checked against PyTorch on 64 images, as ``autocomp.search._before.run_once`` does), so
that a setting the runtime cannot run is offered in no block. The cut way
(``autocomp.search._sensitivity.unrunnable_settings``) runs each setting in the first block alone, and in the whole
model only where that failed; the whole way runs each in every block (the same function, with ``first_block_only``
returning None, as for a model whose blocks cannot be cut). The model has random weights and the images are random
(only the time is compared, and the settings each way refuses are printed); the space is
``search_spaces/vit_all.yaml`` unless ``--space`` names another. Rounds alternate the two ways so that drift of a
shared machine falls on both alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from autocomp.hardware import read_profile
from autocomp.measure import num_threads
from autocomp.measure.placement import measure_on_device
from autocomp.measure.profiling import cpu_description
from autocomp.models import vit_blocks
from autocomp.search import _sensitivity
from autocomp.space import load_space


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deit_tiny_patch16_224")
    parser.add_argument("--profile", default="hardware_profiles/onnxruntime_cpu.yaml")
    parser.add_argument("--space", default="search_spaces/vit_all.yaml")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    import timm

    print(f"CPU: {cpu_description()}; {torch.get_num_threads()} threads")
    torch.manual_seed(0)
    model = timm.create_model(args.model, num_classes=10).eval()
    heads = [block.attn.num_heads for block in vit_blocks(model)]
    space = load_space(args.space)
    once = dataclasses.replace(read_profile(args.profile), warmup=0, repeats=1)
    size = model.pretrained_cfg.get("input_size", (3, 224, 224))
    calib, images = torch.randn(16, *size), torch.randn(64, *size)
    runs: list[int] = []

    def run(candidate: torch.nn.Module) -> None:
        runs.append(len(candidate.blocks))
        measure_on_device(candidate, once, example=calib, check=images)

    def whole() -> set:
        cut = _sensitivity.first_block_only
        _sensitivity.first_block_only = lambda _model: None  # as a model whose blocks cannot be cut: every block
        try:
            return _sensitivity.unrunnable_settings(model, space, heads, calib=calib, run=run)
        finally:
            _sensitivity.first_block_only = cut

    ways = {"first block, every block where it failed": lambda: _sensitivity.unrunnable_settings(
        model, space, heads, calib=calib, run=run), "every block": whole}
    times: dict[str, list[float]] = {way: [] for way in ways}
    refused, blocks_run = {}, {}
    with num_threads(torch.get_num_threads()):
        for _ in range(args.rounds):
            for way, pass_ in ways.items():
                runs.clear()
                began = time.perf_counter()
                refused[way] = pass_()
                times[way].append(time.perf_counter() - began)
                blocks_run[way] = list(runs)
    print(f"{args.model}, {len(heads)} blocks, {once.name}, {args.space}, {args.rounds} rounds")
    for way, seconds in times.items():
        print(f"  {way}: median {statistics.median(seconds):.1f} s ({', '.join(f'{s:.1f}' for s in seconds)}); "
              f"{len(blocks_run[way])} runs, of {sorted(set(blocks_run[way]))} blocks; refused: "
              + (", ".join(f"{knob} {value:g}" for knob, value in sorted(refused[way])) or "none"))
    cut, full = (statistics.median(t) for t in times.values())
    print(f"  speed-up {full / cut:.2f}x; the same settings refused: {len(set(map(frozenset, refused.values()))) == 1}")


if __name__ == "__main__":
    main()
