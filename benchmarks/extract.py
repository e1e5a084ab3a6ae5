"""Feature-extraction throughput on ../shared/data/hymenoptera (train + val), in one run:

1. Sortlab end to end: ``ensure_features`` on a project (read stored JPEG, decode, preprocess,
   network, store). The import into the temporary project and the one-time network load/ONNX export
   happen first and are not timed.
2. The limit: the same ONNX network in onnxruntime on tensors decoded beforehand (network only),
   run the faster of two ways, so Sortlab's own way of using the cores cannot flatter the ratio:
   one call at a time with onnxruntime's intra-op threads on every core (batches of 32), or one
   single-threaded call per core at once (Sortlab's way, its batch size).
3. The textbook recipe: eager PyTorch, one image at a time (PIL open, torchvision transforms,
   ``model(x)``) on a subset.

4. Lite0 end to end, the default before issue 15 (the default is Lite1 now): the default network's
   extraction cost relative to it (issue 15 allows up to 2.5x for its accuracy gain).

5. Decoding only: the stored bytes decoded and preprocessed into network tensors on as many threads as
   Sortlab's workers, no network. Decoding shares the cores with the network, so the bound for
   Sortlab end to end is 1 / (1/network + 1/decode) (target: Sortlab >= 0.9 of it, issue 19).

6. Camera frames: 1920x1080 JPEGs (made from the dataset's photos, upscaled), imported and extracted
   end to end, decode-only rate beside it: JPEG draft decoding at reduced DCT scale should keep the
   rate near the small images'. Also their decoding straight from the files (``features_for_files``'s
   path, files outside the project, where no import downscaled them).

Sortlab, Lite0, the decode-only rate and both limits are each measured three times, interleaved, and the best of each is kept,
so a burst of load from other processes on this shared machine hits all alike. ``peak_rss_mb`` is
the peak resident memory of this process and of its children (ru_maxrss).

Run from the repository root: ``.venv/bin/python benchmarks/extract.py``.
Prints human-readable lines, then one JSON line (the last line) for benchmarks/run_all.py.
Targets: sortlab >= 80 % of the limit (issue 3); Lite0 never under 60 images/s on a 2-core CPU (issue 3);
the default network's end-to-end cost <= 2.5x Lite0's (issue 15).
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from concurrent.futures import ThreadPoolExecutor  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from engine.features.backbones import DEFAULT_BACKBONE, get_backbone  # noqa: E402
from engine.features.extraction import ensure_features, get_runner  # noqa: E402
from engine.images.importing import import_paths  # noqa: E402
from engine.runtime.jobs import JobContext  # noqa: E402
from engine.features.onnx_backend import OnnxFeatureRunner, default_threads  # noqa: E402
from engine.features.preprocess import preprocess_bytes  # noqa: E402
from engine.torch.networks import load_backbone  # noqa: E402
from storage.featurestore import delete_feature_set  # noqa: E402
from storage.images import image_ids, read_image_bytes  # noqa: E402
from storage.project import create_project  # noqa: E402

DATA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "hymenoptera"
NAIVE_IMAGES = 60
REPEATS = 3
PREVIOUS_DEFAULT = "efficientnet_lite0"
FRAMES = 120  # 1920x1080 camera frames for case 6
FRAME_SIZE = (1920, 1080)


SEQUENTIAL_BATCH = 32


def sequential_limit(session: OnnxFeatureRunner, pixels: np.ndarray) -> float:
    """Network only: one call at a time, each spread over every core by onnxruntime's threads."""
    session.run(pixels[:SEQUENTIAL_BATCH])  # warm-up
    started = time.perf_counter()
    for start in range(0, len(pixels), SEQUENTIAL_BATCH):
        session.run(pixels[start : start + SEQUENTIAL_BATCH])
    return len(pixels) / (time.perf_counter() - started)


def parallel_limit(runner, pixels: np.ndarray) -> float:
    """Network only: one single-threaded call per core at once, as Sortlab's workers run it."""
    size = runner.batch_size
    batches = [pixels[start : start + size] for start in range(0, len(pixels), size)]
    runner.run_one(batches[0])  # warm-up
    started = time.perf_counter()
    with ThreadPoolExecutor(runner.parallel_calls) as pool:
        list(pool.map(runner.run_one, batches))
    return len(pixels) / (time.perf_counter() - started)


def decode_images_per_second(items: list, spec, workers: int, read=None) -> float:
    """Decode and preprocess only (no network) on ``workers`` threads, each into its own tensor slot, as
    Sortlab's decode workers do; ``read`` turns an item into bytes (files are read inside the timing)."""
    size = spec.input_size

    def work(part: list) -> None:
        out = np.empty((3, size, size), dtype=np.float32)
        for item in part:
            preprocess_bytes(read(item) if read else item, spec, out=out)

    parts = [items[w::workers] for w in range(workers)]
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(work, parts))
    return len(items) / (time.perf_counter() - started)


def camera_frames(files: list[Path], folder: Path) -> list[Path]:
    """FRAMES 1920x1080 JPEGs (quality 90, 4:2:0 as cameras write them) upscaled from the dataset's photos."""
    from PIL import Image

    frames = []
    for i, path in enumerate(files[:: max(1, len(files) // FRAMES)][:FRAMES]):
        with Image.open(path) as image:
            frame = image.convert("RGB").resize(FRAME_SIZE, Image.Resampling.BICUBIC)
        frames.append(folder / f"frame-{i:03d}.jpg")
        frame.save(frames[-1], quality=90)
    return frames


def peak_rss_mb() -> float:
    """Peak resident memory of this process and (separately measured) its children, in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, children) / 1024, 1)  # Linux reports KiB


def sortlab_images_per_second(project, backbone: str, layer: str) -> tuple[float, int]:
    delete_feature_set(project, backbone, layer)
    started = time.perf_counter()
    info = ensure_features(JobContext(), project, backbone, layer)
    seconds = time.perf_counter() - started
    return info.extracted / seconds, info.extracted


def naive_images_per_second(files: list[Path], spec) -> float:
    """The textbook loop: PIL open, torchvision transforms, model(x), one image at a time."""
    from PIL import Image
    from torchvision import transforms

    transform = transforms.Compose([
        transforms.Resize(spec.resize_size, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(spec.input_size),
        transforms.ToTensor(),
        transforms.Normalize(spec.mean, spec.std),
    ])
    model = load_backbone(spec)
    with torch.no_grad():
        model(torch.zeros(1, 3, spec.input_size, spec.input_size))  # warm-up
        started = time.perf_counter()
        for path in files:
            x = transform(Image.open(path).convert("RGB")).unsqueeze(0)
            model(x)
    return len(files) / (time.perf_counter() - started)


def main() -> int:
    if not (DATA_DIR / "train").is_dir():
        print(f"benchmark needs the dataset at {DATA_DIR} (train/ and val/); it is not there.", file=sys.stderr)
        return 1
    spec = get_backbone(DEFAULT_BACKBONE)
    layer = spec.default_layer
    files = sorted(p for p in DATA_DIR.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})

    with tempfile.TemporaryDirectory() as folder:
        project = create_project(Path(folder) / "bench.sortlab")
        report = import_paths(JobContext(), project, [DATA_DIR / "train", DATA_DIR / "val"])
        print(f"imported (not timed): {report.summary()}")
        started = time.perf_counter()
        runner = get_runner(spec.name, layer)
        print(f"network ready in {time.perf_counter() - started:.1f} s on {runner.device} "
              "(first run exports and caches the ONNX copy)")

        ids = image_ids(project)
        stored = read_image_bytes(project, ids)
        pixels = np.stack([preprocess_bytes(stored[i], spec) for i in ids])

        if not hasattr(runner, "run_one"):
            print("this benchmark measures the onnxruntime CPU path; SORTLAB_RUNTIME must not force torch",
                  file=sys.stderr)
            return 1
        all_cores = OnnxFeatureRunner(runner.path, default_threads())
        get_runner(PREVIOUS_DEFAULT, layer)  # loaded (and exported) before timing, like the default
        sequential, parallel, sortlabs, lite0s, decodes = [], [], [], [], []
        payloads = [stored[i] for i in ids]
        extracted = 0
        for _ in range(REPEATS):
            sequential.append(sequential_limit(all_cores, pixels))
            parallel.append(parallel_limit(runner, pixels))
            rate, extracted = sortlab_images_per_second(project, spec.name, layer)
            sortlabs.append(rate)
            decodes.append(decode_images_per_second(payloads, spec, runner.parallel_calls))
            lite0s.append(sortlab_images_per_second(project, PREVIOUS_DEFAULT, layer)[0])
        project.close()

        # 6. camera frames: imported (Sortlab stores at most DEFAULT_MAX_SIDE) and extracted end to end.
        frames = camera_frames(files, Path(folder))
        frame_project = create_project(Path(folder) / "frames.sortlab")
        import_paths(JobContext(), frame_project, frames)
        frame_ids = image_ids(frame_project)
        frame_stored = read_image_bytes(frame_project, frame_ids)
        frame_payloads = [frame_stored[i] for i in frame_ids]
        frame_rates, frame_decodes, frame_file_decodes = [], [], []
        for _ in range(REPEATS):
            frame_rates.append(sortlab_images_per_second(frame_project, spec.name, layer)[0])
            frame_decodes.append(decode_images_per_second(frame_payloads, spec, runner.parallel_calls))
            frame_file_decodes.append(decode_images_per_second(frames, spec, runner.parallel_calls, Path.read_bytes))
        frame_project.close()

    naive = naive_images_per_second(files[:: max(1, len(files) // NAIVE_IMAGES)][:NAIVE_IMAGES], spec)
    limit, sortlab = max(max(sequential), max(parallel)), max(sortlabs)
    ratio = sortlab / limit
    decode = max(decodes)
    bound = 1.0 / (1.0 / limit + 1.0 / decode)  # network and decoding share the same cores
    frame_rate, frame_decode = max(frame_rates), max(frame_decodes)

    def runs(rates: list[float]) -> str:
        return ", ".join(f"{rate:.1f}" for rate in rates)

    print(f"images: {extracted} ({spec.title}, layer {layer}, {runner.device})")
    print(f"Sortlab end to end (decode, preprocess, network, store): {sortlab:.1f} images/s (runs: {runs(sortlabs)})")
    print(f"limit, network only on pre-decoded tensors: {limit:.1f} images/s, the best of")
    print(f"  one call at a time on {all_cores.threads} intra-op threads, batches of {SEQUENTIAL_BATCH}: "
          f"{max(sequential):.1f} (runs: {runs(sequential)})")
    print(f"  {runner.parallel_calls} single-threaded calls at once, batches of {runner.batch_size}: "
          f"{max(parallel):.1f} (runs: {runs(parallel)})")
    print(f"decode only (stored bytes -> tensors, {runner.parallel_calls} threads): {decode:.1f} images/s "
          f"(runs: {runs(decodes)})")
    print(f"combined bound 1/(1/network + 1/decode): {bound:.1f} images/s; Sortlab / bound: {sortlab / bound:.0%} "
          "(target >= 90 %)")
    print(f"{FRAME_SIZE[0]}x{FRAME_SIZE[1]} camera frames ({len(frame_payloads)}): Sortlab end to end {frame_rate:.1f} "
          f"images/s ({frame_rate / sortlab:.0%} of the small images' rate; runs: {runs(frame_rates)}); decode only "
          f"{frame_decode:.1f} images/s as stored, {max(frame_file_decodes):.1f} straight from the files")
    print(f"naive eager PyTorch, one image at a time ({NAIVE_IMAGES} images): {naive:.1f} images/s")
    lite0 = max(lite0s)
    print(f"Sortlab / limit: {ratio:.0%} (target >= 80 %)")
    print(f"Lite0 end to end: {lite0:.1f} images/s (runs: {runs(lite0s)}; target >= 60); the default "
          f"{spec.title} costs {lite0 / sortlab:.2f}x Lite0's time (target <= 2.5x)")
    print(json.dumps({
        "benchmark": "extract", "backbone": spec.name, "images": extracted, "sortlab_img_s": round(sortlab, 1),
        "lite0_sortlab_img_s": round(lite0, 1), "cost_vs_lite0": round(lite0 / sortlab, 2),
        "limit_img_s": round(limit, 1), "limit_sequential_img_s": round(max(sequential), 1),
        "limit_parallel_img_s": round(max(parallel), 1), "naive_img_s": round(naive, 1),
        "ratio_to_limit": round(ratio, 3), "decode_img_s": round(decode, 1), "bound_img_s": round(bound, 1),
        "ratio_to_bound": round(sortlab / bound, 3), "frames_1080p_img_s": round(frame_rate, 1),
        "frames_vs_small": round(frame_rate / sortlab, 3), "frames_decode_img_s": round(frame_decode, 1),
        "frames_file_decode_img_s": round(max(frame_file_decodes), 1), "peak_rss_mb": peak_rss_mb(),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
