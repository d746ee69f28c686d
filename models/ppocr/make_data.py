"""Calibration and eval data for the PP-OCR models shipped by ``rapidocr-onnxruntime``.

Real pretrained OCR models need real-looking text: random noise gives a detector nothing to
detect. This renders English words and numbers in the DejaVu fonts (Debian's fonts-dejavu-core,
or the copy matplotlib/PIL ship) over crops of scikit-learn's two bundled photographs and plain
or gradient backgrounds, deterministically from a seed, and preprocesses them the way PaddleOCR
does:

- det: 1x3x640x640 RGB, (pixel/255 - mean) / std with ImageNet mean/std
- rec: 1x3x48x320, one text line, height 48, width by aspect ratio, right-padded, (pixel/255-0.5)/0.5
- cls: 1x3x48x192, like rec; half of the lines rotated by 180 degrees

    python models/ppocr/make_data.py --out DIR     # writes det|rec|cls-{calib,eval}.npz
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

SEED = 7
WORDS = (
    "edge device model camera gateway sensor rollout wave canary health probe latency error budget "
    "quantize package signed image registry fleet cluster node pool arm64 amd64 version digest "
    "factory line station belt pallet order invoice total amount date time serial batch lot "
    "temperature pressure voltage current speed north south east west exit entrance warning "
    "caution danger open closed push pull level floor room office parking ticket gate platform"
).split()
FONT_NAMES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def find_fonts() -> list[Path]:
    roots = [Path("/usr/share/fonts/truetype/dejavu")]
    try:
        import matplotlib

        roots.append(Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf")
    except ImportError:
        pass
    fonts = [r / n for r in roots for n in FONT_NAMES if (r / n).is_file()]
    if not fonts:
        raise SystemExit("no DejaVu fonts found: apt-get install fonts-dejavu-core")
    return fonts


def photos() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return [np.asarray(im) for im in load_sample_images().images]


def background(rng: np.random.Generator, size: tuple[int, int], pics: list[np.ndarray]) -> Image.Image:
    w, h = size
    kind = rng.integers(3)
    if kind == 0:
        pic = pics[rng.integers(len(pics))]
        y = rng.integers(0, max(1, pic.shape[0] - h))
        x = rng.integers(0, max(1, pic.shape[1] - w))
        crop = Image.fromarray(pic[y : y + h, x : x + w]).resize((w, h))
        # Wash the photo out so text stays readable, as on signs and labels.
        return Image.blend(crop, Image.new("RGB", (w, h), (235, 235, 230)), 0.55)
    base = rng.integers(170, 256, 3)
    if kind == 1:
        return Image.new("RGB", (w, h), tuple(int(v) for v in base))
    grad = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    other = rng.integers(150, 256, 3)
    arr = (base * (1 - grad) + other * grad).repeat(h, axis=0)
    return Image.fromarray(arr.astype(np.uint8))


def phrase(rng: np.random.Generator) -> str:
    parts = []
    for _ in range(rng.integers(1, 4)):
        if rng.random() < 0.25:
            parts.append(str(rng.integers(0, 100000)))
        else:
            w = WORDS[rng.integers(len(WORDS))]
            parts.append(w.upper() if rng.random() < 0.3 else w.capitalize() if rng.random() < 0.5 else w)
    return " ".join(parts)


def ink(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 90, 3))  # type: ignore[return-value]


def det_image(rng: np.random.Generator, fonts: list[Path], pics: list[np.ndarray]) -> np.ndarray:
    im = background(rng, (640, 640), pics)
    draw = ImageDraw.Draw(im)
    y = int(rng.integers(10, 60))
    while y < 600:
        font = ImageFont.truetype(str(fonts[rng.integers(len(fonts))]), int(rng.integers(18, 56)))
        text = phrase(rng)
        x = int(rng.integers(5, 200))
        draw.text((x, y), text, fill=ink(rng), font=font)
        y += int(font.size * rng.uniform(1.4, 2.6))
    if rng.random() < 0.3:
        im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    arr = np.asarray(im, np.float32) / 255.0
    return ((arr - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


def line_image(rng: np.random.Generator, fonts: list[Path], pics: list[np.ndarray], width: int) -> np.ndarray:
    font = ImageFont.truetype(str(fonts[rng.integers(len(fonts))]), int(rng.integers(26, 40)))
    text = phrase(rng)
    left, top, right, bottom = font.getbbox(text)
    tw, th = int(right - left) + 8, int(bottom - top) + 8
    im = background(rng, (tw, th), pics)
    ImageDraw.Draw(im).text((4 - left, 4 - top), text, fill=ink(rng), font=font)
    new_w = min(width, max(8, round(48 * tw / th)))
    im = im.resize((new_w, 48), Image.Resampling.BILINEAR)
    arr = (np.asarray(im, np.float32) / 255.0 - 0.5) / 0.5
    out = np.zeros((48, width, 3), np.float32)
    out[:, :new_w] = arr
    return out.transpose(2, 0, 1)


def make(out: Path, det: tuple[int, int] = (32, 16), rec: tuple[int, int] = (64, 64), seed: int = SEED) -> None:
    rng = np.random.default_rng(seed)
    fonts, pics = find_fonts(), photos()
    out.mkdir(parents=True, exist_ok=True)
    for split, n in (("calib", det[0]), ("eval", det[1])):
        np.savez_compressed(out / f"det-{split}.npz", x=np.stack([det_image(rng, fonts, pics) for _ in range(n)]))
    for split, n in (("calib", rec[0]), ("eval", rec[1])):
        np.savez_compressed(out / f"rec-{split}.npz", x=np.stack([line_image(rng, fonts, pics, 320) for _ in range(n)]))
        lines = [line_image(rng, fonts, pics, 192) for _ in range(n)]
        flipped = [ln[:, ::-1, ::-1].copy() if i % 2 else ln for i, ln in enumerate(lines)]
        np.savez_compressed(out / f"cls-{split}.npz", x=np.stack(flipped))
        (out / f"cls-{split}-labels.txt").write_text("".join(f"{i % 2}\n" for i in range(n)))


def main() -> None:
    parser = argparse.ArgumentParser(description="Render OCR calibration/eval data for the PP-OCR models.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    make(args.out, seed=args.seed)
    print(f"wrote PP-OCR data to {args.out}")


if __name__ == "__main__":
    main()
