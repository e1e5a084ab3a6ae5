"""The GPU path, measured (issue 19, part 4), on whatever CUDA device torch sees.

For EfficientNet-Lite0 and Lite2 (pooled features), on the dataset's photos (../shared/data/hymenoptera,
repeated to ``--images`` stored images):

1. decode only: stored JPEG bytes -> normalized tensors on every core (Sortlab's preprocessing), no network;
2. network only, on tensors decoded beforehand, in float32, float32 channels-last, and float16
   channels-last; half precision counts as usable when every feature stays within 1e-2 of float32's
   (|f16 - f32| <= 1e-2 * max(1, |f32|));
3. the fast pipeline: decode threads fill pinned (page-locked) host batches, copied to the GPU without
   blocking, the network run channels-last in the best precision that passed (2);
4. Sortlab end to end: ``ensure_features`` on a project (the runtime Sortlab chooses on this machine:
   PyTorch when CUDA is present), stored bytes to stored vectors;
5. fine-tuning: images/s of full fine-tuning steps (the engine's ``finetune.train_one_epoch``, the
   network from ``finetune.build_network``, batches of 64 augmented crops);
and the peak GPU memory of each step. Target (issue 19): >= 2,000 images/s Lite0 extraction on a
data-center GPU, limited by decoding (compare with the decode-only rate), not by the GPU.

Without CUDA it says so in its JSON line and exits 0. ``--dry-run-cpu`` runs every step on the CPU with a
few images (a check that the code paths work; the figures mean nothing).
Run from the repository root: ``.venv/bin/python benchmarks/gpu.py [--images N] [--dry-run-cpu]``.
Last line: JSON {"benchmark": "gpu", "cuda", "device", "backbones": {name: {...}}, ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA_DIR = ROOT.parent / "shared" / "data" / "hymenoptera"
BACKBONES = ("efficientnet_lite0", "efficientnet_lite2")
GPU_BATCH = 256
FINETUNE_BATCH = 64
HALF_TOLERANCE = 1e-2


def no_cuda_line(reason: str) -> int:
    print(reason)
    print(json.dumps({"benchmark": "gpu", "cuda": False, "note": reason}))
    return 0


def build_project(folder: Path, images: int):
    """The dataset imported once, its rows repeated (new content hashes) until ``images`` are stored."""
    from engine.images.importing import import_paths
    from engine.runtime.jobs import JobContext
    from storage.project import create_project

    project = create_project(folder / "gpu.sortlab")
    files = sorted(p for p in DATA_DIR.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    import_paths(JobContext(), project, files[:: max(1, len(files) // images)] if images < len(files) else files)
    columns = ("original_name, original_path, source, width, height, original_format, imported_at, data, thumbnail, "
               "split, split_pinned")
    copy = 1
    with project.engine.begin() as connection:
        while connection.exec_driver_sql("SELECT count(*) FROM images").scalar() < images:
            connection.exec_driver_sql(
                f"INSERT INTO images (content_hash, {columns}) SELECT content_hash || '-copy{copy}', {columns} "
                "FROM images WHERE content_hash NOT LIKE '%-copy%'")
            copy += 1
        connection.exec_driver_sql(
            "DELETE FROM images WHERE id NOT IN (SELECT id FROM images ORDER BY id LIMIT ?)", (images,))
    return project


def decode_rate(payloads: list[bytes], spec, workers: int) -> float:
    """Decoding and preprocessing only, on ``workers`` threads (each into its own tensor slot)."""
    from engine.features.preprocess import preprocess_bytes

    size = spec.input_size

    def work(part: list[bytes]) -> None:
        out = np.empty((3, size, size), dtype=np.float32)
        for data in part:
            preprocess_bytes(data, spec, out=out)

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(work, [payloads[w::workers] for w in range(workers)]))
    return len(payloads) / (time.perf_counter() - started)


class GpuExtractor:
    """The feature extractor on ``device`` in one precision and memory format."""

    def __init__(self, spec, device, half: bool, channels_last: bool):
        import torch

        from engine.torch.extractors import load_feature_extractor

        self.torch, self.device, self.half, self.channels_last = torch, device, half, channels_last
        module = load_feature_extractor(spec, "pooled").to(device)
        if channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.module = module.half() if half else module

    def __call__(self, batch):
        """A (N, 3, H, W) float32 tensor (on any device) -> (N, D) float32 features on the device."""
        torch = self.torch
        x = batch.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return self.module(x.half() if self.half else x).float()


def synchronize(torch, device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def network_rate(extractor: GpuExtractor, pixels, device, repeats: int = 3) -> tuple[float, np.ndarray]:
    """Images/s of the network alone on tensors already on the device, and its features."""
    torch = extractor.torch
    on_device = pixels.to(device)
    extractor(on_device[:GPU_BATCH])  # warm-up (cuDNN picks its algorithms)
    synchronize(torch, device)
    best, features = 0.0, []
    for _ in range(repeats):
        features = []
        started = time.perf_counter()
        for start in range(0, len(on_device), GPU_BATCH):
            features.append(extractor(on_device[start:start + GPU_BATCH]))
        synchronize(torch, device)
        best = max(best, len(on_device) / (time.perf_counter() - started))
    return best, torch.cat(features).cpu().numpy()


def half_is_close(f16: np.ndarray, f32: np.ndarray) -> tuple[bool, float]:
    worst = float(np.max(np.abs(f16 - f32) / np.maximum(1.0, np.abs(f32))))
    return worst <= HALF_TOLERANCE, worst


def pipeline_rate(extractor: GpuExtractor, payloads: list[bytes], spec, workers: int, pinned: bool) -> float:
    """Decode threads fill (pinned) host batches while the GPU runs the previous ones: end to end rate."""
    torch = extractor.torch
    from engine.features.preprocess import preprocess_bytes

    size = spec.input_size
    batches = [payloads[start:start + GPU_BATCH] for start in range(0, len(payloads), GPU_BATCH)]

    def decode(batch: list[bytes]):
        host = torch.empty((len(batch), 3, size, size), dtype=torch.float32, pin_memory=pinned)
        view = host.numpy()
        for index, data in enumerate(batch):
            preprocess_bytes(data, spec, out=view[index])
        return host

    def decode_parallel(pool, batch):  # one batch split over every decode thread
        parts = [batch[w::workers] for w in range(workers)]
        return [pool.submit(decode, part) for part in parts if part]

    kept = []
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        pending = [decode_parallel(pool, batches[0])]
        for index in range(len(batches)):
            if index + 1 < len(batches):  # decode the next batch while this one runs
                pending.append(decode_parallel(pool, batches[index + 1]))
            for future in pending.pop(0):
                kept.append(extractor(future.result()))
            if len(kept) > 8:  # the features come back to the host as Sortlab stores them
                torch.cat(kept).cpu()
                kept.clear()
    if kept:
        torch.cat(kept).cpu()
    synchronize(torch, extractor.device)
    return len(payloads) / (time.perf_counter() - started)


def sortlab_rate(project, backbone: str) -> tuple[float, str]:
    from engine.features.extraction import ensure_features, get_runner
    from engine.runtime.jobs import JobContext
    from storage.featurestore import delete_feature_set

    runner = get_runner(backbone, "pooled")  # loaded before timing
    delete_feature_set(project, backbone, "pooled")
    started = time.perf_counter()
    info = ensure_features(JobContext(), project, backbone, "pooled")
    return info.extracted / (time.perf_counter() - started), runner.device


def finetune_rate(backbone: str, payloads: list[bytes], device, steps: int, batch: int = FINETUNE_BATCH) -> float:
    """Images/s of full fine-tuning (backbone trainable), the engine's epoch loop and augmentation."""
    import torch
    from torch.utils.data import DataLoader

    from engine.features.backbones import get_backbone
    from engine.images.imaging import decode_image
    from engine.runtime.jobs import JobContext
    from engine.torch import finetune
    from engine.torch.image_data import ImageListDataset, train_transform

    spec = get_backbone(backbone)
    images = [decode_image(data).convert("RGB") for data in payloads[:batch * steps]]
    while len(images) < batch * steps:
        images += images[:batch * steps - len(images)]
    targets = [i % 2 for i in range(len(images))]
    dataset = ImageListDataset(images, targets, train_transform(spec.input_size, spec.mean, spec.std))
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=min(8, os.cpu_count() or 1),
                        pin_memory=device.type == "cuda", drop_last=True, persistent_workers=False)
    network = finetune.build_network(backbone, "pooled", 2).to(device)
    finetune.set_backbone_trainable(network, True)
    optimizer = torch.optim.AdamW(finetune.parameter_groups(network, 1e-4, 0.8, 1e-4))
    criterion = torch.nn.CrossEntropyLoss()
    finetune.train_one_epoch(network, criterion, optimizer, loader, device, JobContext(), 0)  # warm-up
    synchronize(torch, device)
    started = time.perf_counter()
    finetune.train_one_epoch(network, criterion, optimizer, loader, device, JobContext(), 1)
    synchronize(torch, device)
    return len(images) / (time.perf_counter() - started)


def measure(backbone: str, project, device, workers: int, finetune_steps: int, on_gpu: bool) -> dict:
    import torch

    from engine.features.backbones import get_backbone
    from storage.images import image_ids, read_image_bytes

    spec = get_backbone(backbone)
    stored = read_image_bytes(project, image_ids(project))
    payloads = list(stored.values())
    result: dict = {"images": len(payloads), "decode_img_s": round(decode_rate(payloads, spec, workers), 1)}
    sample = payloads[:min(len(payloads), 4 * GPU_BATCH)]
    from engine.features.preprocess import preprocess_bytes

    pixels = torch.from_numpy(np.stack([preprocess_bytes(data, spec) for data in sample]))
    variants = {"fp32": (False, False), "fp32_channels_last": (False, True)}
    if on_gpu:  # float16 convolutions are for GPUs; the CPU dry run leaves them out
        variants["fp16_channels_last"] = (True, True)
    features, extractors = {}, {}
    for name, (half, channels_last) in variants.items():
        if on_gpu:
            torch.cuda.reset_peak_memory_stats(device)
        extractors[name] = GpuExtractor(spec, device, half, channels_last)
        rate, features[name] = network_rate(extractors[name], pixels, device)
        result[f"network_{name}_img_s"] = round(rate, 1)
        if on_gpu:
            result[f"network_{name}_peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    result["channels_last_max_diff"] = float(np.max(np.abs(features["fp32_channels_last"] - features["fp32"])))
    best = "fp32_channels_last"
    if "fp16_channels_last" in features:
        close, worst = half_is_close(features["fp16_channels_last"], features["fp32"])
        result["fp16_max_rel_diff"], result["fp16_within_1e-2"] = round(worst, 5), close
        best = "fp16_channels_last" if close else best
    result["pipeline_precision"] = best
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(device)
    result["pipeline_img_s"] = round(pipeline_rate(extractors[best], payloads, spec, workers, pinned=on_gpu), 1)
    if on_gpu:
        result["pipeline_peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    result["pipeline_vs_decode"] = round(result["pipeline_img_s"] / result["decode_img_s"], 3)
    extractors.clear()
    rate, where = sortlab_rate(project, backbone)
    result["sortlab_img_s"], result["sortlab_runtime"] = round(rate, 1), where
    if on_gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    result["finetune_img_s"] = round(finetune_rate(backbone, payloads, device, finetune_steps,
                                                   FINETUNE_BATCH if on_gpu else 8), 1)
    if on_gpu:
        result["finetune_peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8000, help="stored images to extract (dataset repeated)")
    parser.add_argument("--dry-run-cpu", action="store_true", help="every step on the CPU with a few images")
    args = parser.parse_args()
    from engine.runtime.edition import torch_available

    if not torch_available():
        return no_cuda_line("PyTorch is not installed (the CPU edition): no GPU path to measure.")
    import torch

    on_gpu = torch.cuda.is_available() and not args.dry_run_cpu
    if not on_gpu and not args.dry_run_cpu:
        return no_cuda_line("No CUDA device: nothing measured (run on a machine with an NVIDIA GPU).")
    if not (DATA_DIR / "train").is_dir():
        print(f"benchmark needs the dataset at {DATA_DIR}; it is not there.", file=sys.stderr)
        return 1
    device = torch.device("cuda" if on_gpu else "cpu")
    images = args.images if on_gpu else min(args.images, 32)
    workers = os.cpu_count() or 1
    if on_gpu:
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if on_gpu else f"CPU dry run ({workers} cores)"
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        project = build_project(Path(folder), images)
        for backbone in BACKBONES:
            started = time.perf_counter()
            results[backbone] = measure(backbone, project, device, workers, 8 if on_gpu else 1, on_gpu)
            print(f"{backbone} ({time.perf_counter() - started:.0f} s): {results[backbone]}", flush=True)
        project.close()
    lite0 = results[BACKBONES[0]]
    print(f"Lite0 end to end: Sortlab {lite0['sortlab_img_s']} images/s, pipeline {lite0['pipeline_img_s']} "
          f"images/s, decode only {lite0['decode_img_s']} images/s (target >= 2,000 on a data-center GPU)")
    print(json.dumps({
        "benchmark": "gpu", "cuda": on_gpu, "dry_run": not on_gpu, "device": name, "cpus": workers,
        "torch": torch.__version__, "images": images, "backbones": results,
        "lite0_sortlab_img_s": lite0["sortlab_img_s"], "lite0_pipeline_img_s": lite0["pipeline_img_s"],
        "lite0_decode_img_s": lite0["decode_img_s"], "goal_lite0_img_s": 2000,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
