"""Peak memory of ``data import`` on a 1 GB-class image folder: it must stay bounded.

Writes (once, outside git) every Fashion-MNIST image resized to 64x64 RGB as a PNG
folder (``ROOT/train/CLASS/*.png``, ``ROOT/test/CLASS/*.png``: 70,000 images, 860 MB
decoded), imports it with ``python -m hpcnet data import`` in a child process and
reports the child's peak resident memory (``getrusage``: ru_maxrss), against the
decoded size of the data and against ``python -m hpcnet data info`` of the small shipped
digits file (the interpreter and the modules the command line loads: the floor any
import pays).

    python benchmarks/data_import_memory.py [--root /tmp/fm64] [--idx DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "data"))

from fashion_formats import NAMES, fashion  # noqa: E402


def make_folder(root: Path, idx: Path, size: int = 64) -> int:
    """The PNG folder (skipped when ``root/done`` exists); returns the image count."""
    from PIL import Image

    x, y, xt, yt = fashion(idx)
    if (root / "done").exists():
        return len(x) + len(xt)
    t0 = time.perf_counter()
    for split, xs, ys in (("train", x, y), ("test", xt, yt)):
        for name in NAMES:
            (root / split / name).mkdir(parents=True, exist_ok=True)
        for i, (img, label) in enumerate(zip(xs, ys, strict=True)):
            im = Image.fromarray(img).resize((size, size), Image.BILINEAR)
            tinted = np.stack([np.asarray(im), np.asarray(im) // 2, 255 - np.asarray(im)], -1)
            Image.fromarray(tinted).save(root / split / NAMES[int(label)] / f"{i:06d}.png")
    (root / "done").write_text("")
    print(f"wrote {len(x) + len(xt)} PNGs in {time.perf_counter() - t0:.0f} s", flush=True)
    return len(x) + len(xt)


def peak_rss_mib(argv: list[str]) -> tuple[float, float]:
    """(peak RSS of the child in MiB, seconds); the child runs alone."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    p = subprocess.run(argv, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if p.returncode:
        raise SystemExit(f"{argv}: exit {p.returncode}\n{p.stderr}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak <= before:
        raise SystemExit("getrusage: the child's peak is hidden by an earlier, larger child")
    return peak / 1024, took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=Path("/tmp/hpcnet-fm64"))
    ap.add_argument("--idx", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    args = ap.parse_args()
    n = make_folder(args.root, args.idx)
    decoded_mib = n * 3 * 64 * 64 / 2**20
    on_disk = sum(f.stat().st_size for f in args.root.rglob("*.png")) / 2**20
    # the floor: the same command line reading a small file (its interpreter, modules)
    digits = str(ROOT / "hpcnet" / "data" / "shipped" / "digits.h5")
    floor, _ = peak_rss_mib([sys.executable, "-m", "hpcnet", "data", "info", digits])
    out = args.root.parent / "hpcnet-fm64.h5"
    argv = [sys.executable, "-m", "hpcnet", "data", "import", str(args.root), "--out", str(out)]
    peak, took = peak_rss_mib(argv)
    out.unlink()
    result = {
        "images": n,
        "decoded_mib": round(decoded_mib),
        "png_on_disk_mib": round(on_disk),
        "import_peak_rss_mib": round(peak),
        "bare_import_rss_mib": round(floor),
        "above_floor_mib": round(peak - floor),
        "images_per_s": round(n / took),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
