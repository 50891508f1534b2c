"""Static int8 activations on CPUs with and without VNNI: does oneDNN's kernel compute what its simulation says?

    .venv/bin/python benchmarks/int8_static_range.py

Runs one child process per ISA cap (none, AVX2, SSE41: ``ONEDNN_MAX_CPU_ISA``, with ``ATEN_CPU_CAPABILITY=default``
for the capped ones). Each compresses the same seeded ViT with 8-bit weights and static 8-bit activations and
reports the largest difference between the kernel's output and the fake-quant simulation of the same layers, as a
fraction of the output range: once as autocomp builds it (the range the CPU computes exactly), once forced to the full
uint8 range (what autocomp did before: wrong numbers where the kernel sums in 16 bits).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

CHILD = r"""
import json, timm, torch
from autocomp import Recipe, compress
from autocomp.ops import _qlayers as q  # where the kernel's range is decided
from autocomp.measure.profiling import cpu_description

torch.manual_seed(0)
model = timm.create_model("vit_tiny_patch16_224", img_size=64, patch_size=8, embed_dim=192, depth=4, num_heads=3,
                          num_classes=10).eval()
images = torch.randn(32, 3, 64, 64, generator=torch.Generator().manual_seed(1))
recipe = Recipe.from_dict({"blocks": [{"quantize": {"weight_bits": 8, "act_bits": 8}}] * 4})
top = q.int8_static_range()

def error(quant_max):
    q.activation_quant_max = lambda: quant_max
    built = compress(model, recipe, calibration=images[:16])
    with torch.no_grad():
        q.int8_static_range = lambda: quant_max  # run the kernel on these layers, whatever this CPU computes exactly
        kernel = built(images[16:])
        q.int8_static_range = lambda: None  # the same layers, simulated
        simulated = built(images[16:])
        q.int8_static_range = lambda: top
    return float((kernel - simulated).abs().max() / (simulated.max() - simulated.min()))

print(json.dumps({"cpu": cpu_description(), "range": top, "autocomp": error(top or 255), "full_range": error(255)}))
"""


def main() -> None:
    for cap in (None, "AVX2", "SSE41"):
        env = dict(os.environ)
        if cap:
            env.update(ATEN_CPU_CAPABILITY="default", ONEDNN_MAX_CPU_ISA=cap)
        out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"cap {cap or 'none':6s} int8 static range {row['range']}: kernel vs simulation, max |diff| / output "
              f"range: autocomp {row['autocomp']:.4f}, forced full uint8 range {row['full_range']:.4f}")
        print(f"   CPU: {row['cpu']}")


if __name__ == "__main__":
    main()
