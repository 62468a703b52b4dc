"""Frames per second of `styleengine video` at a size, with every other flag at its default: a child process
on a clip of a window panning across skimage's astronaut (benchmarks/video_clips.py), its per-frame seconds
read from `--trace`.

    python -m styleengine.benchmarks.video_throughput \
        --weights ../shared/weights/vgg16_imagenet_features.safetensors --model vgg16 \
        --style ../shared/images/starry_night.jpg --size 256 --frames 8

With --ray, the same clip once more as `--ray auto` (a local Ray cluster: overlapping chunks on one actor
per CPU, engine/video_ray.py), and the speed-up of the whole command.

Reported: the whole command's wall time (imports, weights, flow, encode included) over the frames, and the
steady rate of the frames after the first (each from the warped previous result, --frame-iters iterations),
with the load average and the CPU's ISA. Writes benchmarks/results/video-throughput-<isa>-<size>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from styleengine.paths import atomic_write


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import skimage.data

    from styleengine.benchmarks.video_clips import moving_window, write_clip
    from styleengine.engine.machine import cpu_isa

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", required=True)
    parser.add_argument("--model", default="vgg16")
    parser.add_argument("--style", required=True)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--ray", action="store_true", help="also run it as --ray auto and compare")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="video-fps-") as work:
        photo = np.asarray(skimage.data.astronaut(), np.float32) / 255.0
        frames, _ = moving_window(photo, args.frames, (args.size * 3 // 4, args.size))
        clip, trace = Path(work) / "clip.mp4", Path(work) / "trace.jsonl"
        write_clip(clip, frames)
        load_before = os.getloadavg()[0]
        wall, done, rows = _video(clip, trace, Path(work) / "out.mp4", args)
        chunked = None
        if args.ray:
            ray_wall, ray_done, ray_rows = _video(clip, Path(work) / "ray.jsonl", Path(work) / "ray.mp4", args,
                                                  "--ray", "auto")
            chunked = {"wall_s": round(ray_wall, 2), "frames": len(ray_rows),
                       "frames_per_s_whole_command": round(len(ray_rows) / ray_wall, 4),
                       "speedup_over_one_process": round(wall / ray_wall, 3),
                       "lines": [line for line in ray_done.stderr.splitlines() if "chunk" in line.lower()][:5]}
    later = [r["seconds"] for r in rows[1:]]
    result = {
        "what": "`styleengine video` at --size with default flags on a panning clip; wall seconds of the command, "
                "per-frame seconds from its --trace",
        "isa": cpu_isa(), "cpu_count": os.cpu_count(), "size": args.size, "frames": len(rows),
        "model": args.model, "weights": Path(args.weights).name, "style": Path(args.style).name,
        "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
        "wall_s": round(wall, 2), "frames_per_s_whole_command": round(len(rows) / wall, 4),
        "first_frame_s": rows[0]["seconds"], "first_frame_iterations": rows[0]["iterations"],
        "later_frame_s_median": round(statistics.median(later), 3) if later else None,
        "later_frame_iterations": [r["iterations"] for r in rows[1:]],
        "frames_per_s_steady": round(1 / statistics.median(later), 4) if later else None,
        "ray": chunked,
        "auto": [line for line in done.stderr.splitlines() if line.startswith("auto:")],
    }
    out = args.json or Path(f"benchmarks/results/video-throughput-{cpu_isa()}-{args.size}.json")
    atomic_write(out, (json.dumps(result, indent=1) + "\n").encode())
    print(json.dumps({k: v for k, v in result.items() if k != "auto"}))
    return 0


def _video(clip: Path, trace: Path, out: Path, args: argparse.Namespace, *more: str
           ) -> tuple[float, subprocess.CompletedProcess, list[dict]]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "styleengine", "video", str(clip), args.style, "-o", str(out),
                           "--weights", args.weights, "--model", args.model, "--size", str(args.size),
                           "--trace", str(trace), *more], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return wall, done, [json.loads(line) for line in trace.read_text().splitlines() if line.strip()]


if __name__ == "__main__":
    sys.exit(main())
