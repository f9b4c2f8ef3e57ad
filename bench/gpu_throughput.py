"""GPU training throughput: our in-process path vs a plain PyTorch AMP loop, same model and batches.

Self-contained: needs only PyTorch and numpy (no Ray, pyarrow, yaml, torchaudio), so it runs on a
bare GPU box from a checkout's root:  python -m bench.gpu_throughput  (under 5 minutes on one H100/H200).
The model is the fastMRI-shaped I2M2 (magnitude, phase and an early-fusion inter expert: three
PreActResNet-18 with GroupNorm, 320x320 inputs, four 2-way heads), batch 16, bf16 autocast, AdamW.
"Ours" is ``LocalSession.prepare_model`` + ``i2m2_ray.train.loop.train_epoch`` (what ``train`` runs
per epoch); "plain" is the textbook loop. Both take the same CPU batches and copy them to the device.
Output: a table with machine, versions and date, saved as bench/results/train_gpu_<card>.{md,json}.
CPU smoke test:
  python -m bench.gpu_throughput --device cpu --steps 2 --size 16 --batch 2 --rounds 1 --warmup 1 --out /tmp/x
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.common import RESULTS, environment, save
from i2m2_ray.data.format import Manifest, ModalitySpec
from i2m2_ray.models.builder import EncoderConfig, ModelConfig, build_model
from i2m2_ray.train.loop import train_epoch
from i2m2_ray.train.session import LocalSession

FINDINGS = ["cartilage", "meniscus", "acl", "other"]


def fastmri_model(size: int) -> torch.nn.Module:
    spec = {"kind": "image", "shape": [size, size]}
    manifest = Manifest(name="fastmri-shaped", task="multilabel", classes=FINDINGS, splits={},
                        modalities={m: ModalitySpec(column=m, **spec) for m in ("magnitude", "phase")})
    resnet = EncoderConfig(arch="resnet18")  # auto picks it at >= 128 px; forced so --size 64 smoke runs match
    return build_model(manifest, "i2m2:early", ModelConfig(encoders={"magnitude": resnet, "phase": resnet}))


def avmnist_model() -> torch.nn.Module:
    """AV-MNIST-shaped I2M2 LF: LeNet experts on a 28x28 image and a 112x112 spectrogram, 10 classes."""
    manifest = Manifest(name="avmnist-shaped", task="multiclass", classes=[str(i) for i in range(10)], splits={},
                        modalities={"image": ModalitySpec(column="image", kind="image", shape=[28, 28]),
                                    "audio": ModalitySpec(column="audio", kind="spectrogram", shape=[112, 112])})
    return build_model(manifest, "i2m2:lf", ModelConfig())


def make_batches(count: int, batch: int, size: int, kind: str = "fastmri"):
    gen = torch.Generator().manual_seed(0)
    if kind == "avmnist":
        return [({"image": torch.randn(batch, 1, 28, 28, generator=gen),
                  "audio": torch.randn(batch, 1, 112, 112, generator=gen)},
                 torch.randint(0, 10, (batch,), generator=gen)) for _ in range(count)]
    return [({m: torch.randn(batch, 1, size, size, generator=gen) for m in ("magnitude", "phase")},
             torch.randint(0, 2, (batch, len(FINDINGS)), generator=gen)) for _ in range(count)]


def cycle(batches, steps: int):
    for i in range(steps):
        yield batches[i % len(batches)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ours(model, batches, steps: int, device: torch.device, warmup: int) -> float:
    """Our path: the session's prepare_model and the loop's train_epoch (bf16 autocast on CUDA)."""
    run_dir = Path(tempfile.gettempdir()) / "i2m2-gpu-bench"  # never written: only prepare_model is used
    wrapped = LocalSession(run_dir, "auroc", "max").prepare_model(model, device)
    opt = torch.optim.AdamW(wrapped.parameters(), lr=1e-4, weight_decay=1e-2)
    train_epoch(wrapped, opt, cycle(batches, warmup), None, None, device)  # warm-up (cudnn autotune, allocator)
    sync(device)
    t0 = time.perf_counter()
    _, seen = train_epoch(wrapped, opt, cycle(batches, steps), None, None, device)
    sync(device)
    return seen / (time.perf_counter() - t0)


def plain(model, batches, steps: int, device: torch.device, warmup: int) -> float:
    """A textbook PyTorch AMP loop over the same model and batches."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-2)
    use_bf16 = device.type == "cuda"

    def step(inputs, labels):
        inputs = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
        labels = labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            out = model(inputs)
        loss = F.nll_loss(out.log_probs.float().reshape(-1, out.log_probs.shape[-1]), labels.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    for inputs, labels in cycle(batches, warmup):
        step(inputs, labels)
    sync(device)
    t0 = time.perf_counter()
    seen = 0
    for inputs, labels in cycle(batches, steps):
        step(inputs, labels)
        seen += len(labels)
    sync(device)
    return seen / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is reported")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each timed round")
    parser.add_argument("--model", choices=["fastmri", "avmnist"], default="fastmri",
                        help="fastmri: 3x PreActResNet-18 at --size; avmnist: LeNet I2M2 LF (use --batch 40)")
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            parser.error("no CUDA device visible (use --device cpu for a smoke run)")
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    base = avmnist_model() if args.model == "avmnist" else fastmri_model(args.size)
    batches = make_batches(4, args.batch, args.size, args.model)
    models = {"ours": copy.deepcopy(base).to(device), "plain": copy.deepcopy(base).to(device)}
    rates: dict[str, list[float]] = {"ours": [], "plain": []}
    t_start = time.perf_counter()
    for _ in range(args.rounds):  # alternate, so clock/thermal drift hits both paths alike
        rates["plain"].append(plain(models["plain"], batches, args.steps, device, args.warmup))
        rates["ours"].append(ours(models["ours"], batches, args.steps, device, args.warmup))
    ours_sps, plain_sps = statistics.median(rates["ours"]), statistics.median(rates["plain"])
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    env = environment(command="python -m bench.gpu_throughput " + " ".join(sys.argv[1:] if argv is None else argv),
                      device=card, cuda=str(torch.version.cuda))
    params = sum(p.numel() for p in base.parameters())
    desc = ("i2m2:lf LeNet, 28x28 image + 112x112 spectrogram" if args.model == "avmnist"
            else f"i2m2:early 3x PreActResNet-18 {args.size}x{args.size}")
    row = {"model": f"{desc}, {params / 1e6:.2f}M params",
           "batch": args.batch, "steps": args.steps, "rounds": args.rounds,
           "bf16": device.type == "cuda", "ours_samples_per_s": round(ours_sps, 2),
           "plain_samples_per_s": round(plain_sps, 2), "ratio": round(ours_sps / plain_sps, 3),
           "target": ">= 0.9", "wall_s": round(time.perf_counter() - t_start, 1)}
    notes = (f"per-round samples/s: ours {[round(r, 1) for r in rates['ours']]}, "
             f"plain {[round(r, 1) for r in rates['plain']]}")
    prefix = "train_gpu_avmnist_" if args.model == "avmnist" else "train_gpu_"
    name = prefix + re.sub(r"[^a-z0-9]+", "_", card.lower()).strip("_")
    save(name, "GPU training throughput: our path vs a plain PyTorch AMP loop", env, [row], notes=notes, out=args.out,
         payload={"rounds": rates})
    return 0


if __name__ == "__main__":
    sys.exit(main())
