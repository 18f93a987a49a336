"""``ovss segment IMAGES... --classes "..."``: label PNG, overlay PNG and JSON per image."""

from __future__ import annotations

import argparse
from pathlib import Path

from ovss.cli.common import add_model_args, load_segmenter, model_options

_IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "segment",
        help="segment images with a vocabulary of class names",
        description="Writes <stem>_label.png (palette), <stem>_overlay.png and <stem>.json per image.",
        epilog='example: ovss segment photo.jpg --classes "cat; sofa, couch; wall" --out out/',
    )
    p.add_argument("images", nargs="+", type=Path, help="image files or folders of images")
    p.add_argument(
        "--classes",
        required=True,
        help='class names: "cat; sofa, couch; wall" (; between classes, , between synonyms), '
        "a JSON list or a text file with one class per line",
    )
    p.add_argument("--out", type=Path, default=Path("ovss_out"), help="output folder (default: ovss_out)")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default: 1)")
    add_model_args(p)
    p.set_defaults(run=run)


def _expand(paths: list[Path]) -> list[Path]:
    from ovss.errors import ImageReadError

    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in _IMAGE_EXTS)
            if not found:
                raise ImageReadError(f"folder {path} contains no images ({', '.join(sorted(_IMAGE_EXTS))})")
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            raise ImageReadError(f"image {path} does not exist; check the path")
    return files


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ovss.vocab.vocabulary import parse_vocabulary

    files = _expand(args.images)
    vocab = parse_vocabulary(args.classes)  # a bad vocabulary fails before the model loads
    seg = load_segmenter(args)
    seg.set_vocabulary(vocab)
    results = seg.predict_batch(files, batch_size=args.batch_size, **model_options(args))
    stems: dict[str, int] = {}
    for path, result in tqdm(zip(files, results), total=len(files), unit="img", disable=len(files) < 2):
        stem = path.stem
        if stem in stems:  # two inputs with the same name from different folders
            stems[stem] += 1
            stem = f"{stem}_{stems[stem]}"
        else:
            stems[stem] = 0
        result.save(args.out, stem)
        top = ", ".join(f"{n} {100 * f:.0f}%" for n, f in result.present()[:5])
        tqdm.write(f"{path}: {top}")
    print(f"wrote {len(files)} result(s) to {args.out}")
    return 0
