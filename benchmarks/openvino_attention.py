"""OpenVINO's CPU plugin on attention with as many heads as tokens, at a static batch: one timm block's attention
(its qkv weights scaled up so that the attention is peaked, as trained weights make it; random weights leave it
near uniform, where the fault hardly shows) exported to ONNX, converted, and compiled three ways: with a dynamic
batch, reshaped to a static batch (the plugin's fused "snippets" attention), and static with ``SNIPPETS_MODE``
``DISABLE`` (what ``autocomp.runtimes.openvino.ov_compiled`` adds where heads equal tokens). Each line: the largest
difference from PyTorch's output; ``hazard``: what ``heads_equal_tokens`` says of the static model.

    python benchmarks/openvino_attention.py [--batch 16]

A few seconds per line. The user's case: a gap ViT with 4 heads, token-merged to 4 tokens after two blocks.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import openvino as ov
import timm
import torch
from torch import nn

from autocomp.runtimes.openvino import SNIPPETS_OFF, heads_equal_tokens


class Attention(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block.attn(x)


def largest_difference(path: Path, tokens: torch.Tensor, expected: torch.Tensor, static: bool,
                       properties: dict) -> tuple[float, str | None]:
    model = ov.Core().read_model(str(path))
    if static:
        model.reshape({model.input(0): list(tokens.shape)})
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", **properties})
    return float((torch.from_numpy(compiled(tokens.numpy())[0]) - expected).abs().max()), heads_equal_tokens(model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    print(f"OpenVINO {ov.get_version()}, batch {args.batch}; largest difference from PyTorch")
    folder = Path(tempfile.mkdtemp())
    for heads, dim in ((3, 48), (4, 64), (6, 96), (8, 64)):
        torch.manual_seed(0)
        vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=dim, depth=1,
                                num_heads=heads).eval()
        with torch.no_grad():
            vit.blocks[0].attn.qkv.weight.mul_(8)
        attention = Attention(vit.blocks[0]).eval()
        for count in (heads - 1, heads, heads + 1, 2 * heads):
            tokens = torch.randn(args.batch, count, dim)
            path = folder / f"h{heads}n{count}.onnx"
            torch.onnx.export(attention, (tokens,), str(path), dynamo=True, opset_version=20, verbose=False,
                              dynamic_shapes=({0: torch.export.Dim("batch")},), input_names=["x"])
            with torch.no_grad():
                expected = attention(tokens)
            dynamic, _ = largest_difference(path, tokens, expected, False, {})
            static, hazard = largest_difference(path, tokens, expected, True, {})
            off, _ = largest_difference(path, tokens, expected, True, SNIPPETS_OFF)
            print(f"{heads} heads, {count:2d} tokens: dynamic {dynamic:.1e}  static {static:.1e}  static, snippets "
                  f"off {off:.1e}  hazard: {hazard}")


if __name__ == "__main__":
    main()
