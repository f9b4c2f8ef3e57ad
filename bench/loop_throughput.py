"""Training-loop overhead: our loop vs a plain PyTorch loop, same I2M2-LF model, same tensors.

AV-MNIST shapes (1x28x28 image, 1x112x112 spectrogram, 10 classes), batch 40, SGD with
gradient clipping at 8. Both loops run on the same in-memory tensors in one process; they
alternate, each measured ``--repeats`` times, and the table reports the medians and their
ratio (target >= 0.95). Usage: python -m bench.loop_throughput [--rows 2000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from bench.common import environment, save
from i2m2_ray.data.format import Manifest, ModalitySpec
from i2m2_ray.data.memory import TensorSplit, iterate_batches
from i2m2_ray.models import build_model
from i2m2_ray.train.loop import train_epoch

BATCH, CLIP, LR = 40, 8.0, 0.01


def avmnist_manifest() -> Manifest:
    return Manifest("avmnist-shapes", "multiclass", [str(i) for i in range(10)], {
        "image": ModalitySpec("image", "image", [28, 28]),
        "audio": ModalitySpec("spectrogram", "audio", [112, 112])}, {})


def plain_epoch(model: torch.nn.Module, opt: torch.optim.Optimizer, image: torch.Tensor, audio: torch.Tensor,
                labels: torch.Tensor, epoch: int) -> None:
    """What a user would write by hand: shuffle, slice, forward, NLL, backward, clip, step."""
    model.train()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(epoch))
    for start in range(0, len(order), BATCH):
        idx = order[start:start + BATCH]
        out = model({"image": image[idx], "audio": audio[idx]})
        loss = F.nll_loss(out.log_probs, labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(args.rows, 1, 28, 28, generator=gen)
    audio = torch.randn(args.rows, 1, 112, 112, generator=gen)
    labels = torch.randint(0, 10, (args.rows,), generator=gen)
    data = TensorSplit({"image": image, "audio": audio}, labels)
    manifest = avmnist_manifest()
    times: dict[str, list[float]] = {"ours": [], "plain": []}
    models = {}
    for name in times:
        torch.manual_seed(0)
        models[name] = build_model(manifest, "i2m2:lf")
    opts = {name: torch.optim.SGD(m.parameters(), lr=LR, weight_decay=1e-4) for name, m in models.items()}
    cpu = torch.device("cpu")
    plain_epoch(models["plain"], opts["plain"], image, audio, labels, 0)  # warm-up both
    train_epoch(models["ours"], opts["ours"], iterate_batches(data, BATCH, shuffle=True), None, CLIP, cpu)
    for rep in range(1, args.repeats + 1):
        for name in (("ours", "plain") if rep % 2 else ("plain", "ours")):
            t0 = time.perf_counter()
            if name == "ours":
                train_epoch(models[name], opts[name], iterate_batches(data, BATCH, shuffle=True, epoch=rep),
                            None, CLIP, cpu)
            else:
                plain_epoch(models[name], opts[name], image, audio, labels, rep)
            times[name].append(time.perf_counter() - t0)
            print(f"repeat {rep} {name:5s} {args.rows / times[name][-1]:8.1f} samples/s", flush=True)
    ours, plain = args.rows / statistics.median(times["ours"]), args.rows / statistics.median(times["plain"])
    rows = [{"loop": "plain PyTorch", "samples_per_s": round(plain, 1), "ratio": 1.0},
            {"loop": "i2m2_ray.train.loop.train_epoch", "samples_per_s": round(ours, 1),
             "ratio": round(ours / plain, 3)}]
    env = environment(model="I2M2-LF, AV-MNIST shapes", batch=BATCH, rows=args.rows, repeats=args.repeats,
                      command="python -m bench.loop_throughput " + " ".join(sys.argv[1:]))
    save("loop_throughput", "Training loop vs plain PyTorch loop (CPU)", env, rows,
         notes=f"Target ratio >= 0.95; measured {ours / plain:.3f} (medians of {args.repeats} alternating epochs).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
