"""Probe (GPU): do torch-cuda FP16 scores differ more from FP32 at batch 8 than at batch 1?

    python3 benchmarks/probes/fp16_batch_error.py      # on a CUDA machine, $OUT set, edge_ad built

Compares torch-cpu (FP32) with torch-cuda (FP16 autocast) scores at batch 1 and 8, with cuBLAS's
reduced-precision FP16 reductions allowed and not, and each frame of the batch alone. Run 3 on an H100
(benchmarks/results/gpu-h100/fp16-batch-probe-run3.json): a frame scores the same alone as inside a batch
of 8, and the reduction flag changes nothing; the larger error at batch 8 is only the worst of 8 frames.
"""
import json, os, sys, tempfile
from pathlib import Path
import numpy as np
import torch
sys.path.insert(0, "benchmarks"); sys.path.insert(0, "tests")
import edge_ad
from edge_ad.data.synthetic import Counts, make_category
from edge_ad.training.run import TrainConfig, train
from edge_ad_export.exporter import export_run
from fps import build_bundle

out = {}
root = Path(tempfile.mkdtemp())
data = make_category(root / "data", "washer", counts=Counts(train=8, test_good=2, test_per_defect=1), seed=2)
train(TrainConfig(data=str(data), out=str(root / "run"), epochs=1, batch_size=4,
                  model_kwargs={"image_size": 64, "resize_size": 72, "embed_dim": 64, "disc_hidden": 32}))
bundles = {"tiny": export_run(root / "run", root / "bundle").path,
           "simplenet-paper": build_bundle("simplenet", root / "sn", None)[-1].path}
torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
for name, path in bundles.items():
    size = 120
    cpu = edge_ad.load(path, backend="torch-cpu")
    for flag in (True, False):
        torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = flag
        gpu = edge_ad.load(path, backend="torch-cuda", cuda_graph=False)
        for n in (1, 8):
            rng = np.random.default_rng(n)
            frames = [rng.integers(0, 256, (90, 120, 3), dtype=np.uint8) for _ in range(n)]
            want = np.array([r.score for r in cpu.predict(frames)])
            got = np.array([r.score for r in gpu.predict(frames)])
            one = np.array([gpu.predict([f])[0].score for f in frames])
            spread = float(np.ptp(want)) if n > 1 else 1.0
            row = {"max_abs": float(np.abs(got - want).max()), "spread": spread,
                   "batch_vs_single_max_abs": float(np.abs(got - one).max())}
            out[f"{name} reduced_fp16={flag} b{n}"] = row
            print(name, flag, n, row, flush=True)
        gpu.close()
Path(os.environ["OUT"], "fp16-reduction.json").write_text(json.dumps(out, indent=1))
