"""The demo kit's data, and its one loader: Google's emoji (Noto, Apache-2.0) with captions from their names.

    python -m cli.emoji_data [--cache DIR]      (from the repository root; rebuilds cli/kit/emoji64.*)

Source: the npm package ``emoji-datasource-google`` 16.0.0 (MIT; its images are Google's Noto emoji,
Apache-2.0), fetched with ``npm pack`` into a cache folder at build time, never committed. ``build_atlas``
turns it into the small committed files that everything else reads:

- ``cli/kit/emoji64.webp``: every emoji with a Google image (skin-tone variants and the five skin-tone swatches
  left out) as 64x64 RGB composited on white, in a lossless WebP atlas (48 per row, in the package's order);
- ``cli/kit/emoji64.json``: one entry per atlas cell: caption, name, category, subcategory, image file.

Captions are the Unicode name and the category, lower case: "red apple, food and drink". A fixed tenth of the
captions (by a hash of the caption, so adding emoji never moves one) is held out: the base model never trains
on them, and the demo and the reproduction train experts on training captions only and sample held-out ones.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KIT = Path(__file__).resolve().parent / "kit"
ATLAS, INDEX = KIT / "emoji64.webp", KIT / "emoji64.json"
PACKAGE, VERSION = "emoji-datasource-google", "16.0.0"
PACKAGE_SHA1 = "a80ac3e8106cbd4d8648ce758aa099e8827b6157"  # the registry's shasum of the 16.0.0 tarball
DEFAULT_CACHE = Path.home() / ".cache" / "comfyui-glance" / "npm"
SIZE, COLUMNS = 64, 48
HELD_OUT_MODULUS = 10  # a caption is held out when its hash is 0 modulo this


@dataclass
class Emoji:
    """The whole set, in atlas order: ``images`` uint8 [N, 64, 64, 3]; the rest one entry per image."""
    images: "object"
    captions: list[str]
    names: list[str]
    categories: list[str]
    held_out: list[bool]

    def indices(self, held_out: bool) -> list[int]:
        return [i for i, h in enumerate(self.held_out) if h == held_out]

    @property
    def category_names(self) -> list[str]:
        return sorted(set(self.categories))

    def category_ids(self, indices=None) -> list[int]:
        names = self.category_names
        return [names.index(self.categories[i]) for i in (range(len(self.captions)) if indices is None else indices)]

    def tensor(self, indices=None, size: int = SIZE):
        """Images as float [n, 3, size, size] in [0, 1] (area-resized when ``size`` is not 64)."""
        import torch

        images = self.images if indices is None else self.images[list(indices)]
        x = torch.from_numpy(images).movedim(-1, 1).float() / 255.0
        if size != SIZE:
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="area")
        return x


def caption(name: str, category: str) -> str:
    return f"{name.lower()}, {category.lower().replace('&', 'and')}"


def is_held_out(text: str) -> bool:
    return int(hashlib.sha1(text.encode()).hexdigest(), 16) % HELD_OUT_MODULUS == 0


_cached: Emoji | None = None


def load() -> Emoji:
    """The committed atlas and index (read once per process)."""
    global _cached
    if _cached is None:
        import numpy as np
        from PIL import Image

        if not ATLAS.is_file() or not INDEX.is_file():
            raise FileNotFoundError(f"{ATLAS} or {INDEX} is missing: rebuild them with `python -m cli.emoji_data` "
                                    f"(needs npm), or restore them from the repository")
        entries = json.loads(INDEX.read_text())
        atlas = np.asarray(Image.open(ATLAS).convert("RGB"))
        images = np.stack([atlas[(i // COLUMNS) * SIZE:(i // COLUMNS + 1) * SIZE, (i % COLUMNS) * SIZE:(i % COLUMNS + 1) * SIZE]
                           for i in range(len(entries))])
        captions = [e["caption"] for e in entries]
        _cached = Emoji(images=images, captions=captions, names=[e["name"] for e in entries],
                        categories=[e["category"] for e in entries], held_out=[is_held_out(c) for c in captions])
    return _cached


# ---- build time: npm package -> committed atlas ----------------------------------------------------------

def fetch_package(cache: Path = DEFAULT_CACHE) -> Path:
    """``npm pack`` the package into ``cache`` (once; checked against the registry's shasum) and unpack it there.
    Returns the unpacked ``package`` folder."""
    cache = Path(cache)
    unpacked = cache / f"{PACKAGE}-{VERSION}"
    if (unpacked / "package" / "emoji.json").is_file():
        return unpacked / "package"
    tarball = cache / f"{PACKAGE}-{VERSION}.tgz"
    if not tarball.is_file():
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("npm is needed to fetch the emoji images (apt-get install npm, or nodejs.org)")
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([npm, "pack", f"{PACKAGE}@{VERSION}", "--pack-destination", str(cache), "--silent"], check=True,
                       stdout=subprocess.DEVNULL)
    digest = hashlib.sha1(tarball.read_bytes()).hexdigest()
    if digest != PACKAGE_SHA1:
        raise RuntimeError(f"{tarball}: sha1 {digest}, expected {PACKAGE_SHA1}; delete it and run again")
    tmp = cache / f".{PACKAGE}-{VERSION}.unpacking"
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(tarball) as tar:
        tar.extractall(tmp, filter="data")
    tmp.rename(unpacked)
    return unpacked / "package"


def build_atlas(package: Path) -> tuple[bytes, list[dict]]:
    """(lossless WebP atlas, index entries) from the unpacked npm package."""
    import numpy as np
    from PIL import Image

    entries, seen = [], set()
    for e in sorted(json.loads((package / "emoji.json").read_text()), key=lambda e: e["sort_order"]):
        if not e.get("has_img_google") or e["category"] == "Component" or not e.get("name"):
            continue
        text = caption(e["name"], e["category"])
        if text in seen:  # one name appears twice (two code points): keep the first
            continue
        seen.add(text)
        entries.append({"caption": text, "name": e["name"].lower(), "category": e["category"],
                        "subcategory": e["subcategory"], "image": e["image"]})
    rows = (len(entries) + COLUMNS - 1) // COLUMNS
    atlas = np.full((rows * SIZE, COLUMNS * SIZE, 3), 255, np.uint8)
    for i, e in enumerate(entries):
        rgba = Image.open(package / "img" / "google" / "64" / e["image"]).convert("RGBA")
        if rgba.size != (SIZE, SIZE):
            rgba = rgba.resize((SIZE, SIZE), Image.LANCZOS)
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        white.alpha_composite(rgba)
        r, c = divmod(i, COLUMNS)
        atlas[r * SIZE:(r + 1) * SIZE, c * SIZE:(c + 1) * SIZE] = np.asarray(white.convert("RGB"))
    buf = io.BytesIO()
    Image.fromarray(atlas).save(buf, "WEBP", lossless=True, quality=100, method=6)
    return buf.getvalue(), entries


def main(argv=None) -> None:
    import sys

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from schedules.atomic_file import write_atomic

    ap = argparse.ArgumentParser(description="Fetch the emoji package with npm and rebuild cli/kit/emoji64.*")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"npm download cache (default {DEFAULT_CACHE})")
    args = ap.parse_args(argv)
    atlas, entries = build_atlas(fetch_package(args.cache))
    write_atomic(ATLAS, lambda tmp: tmp.write_bytes(atlas))
    write_atomic(INDEX, lambda tmp: tmp.write_text(json.dumps(entries, indent=0, ensure_ascii=False) + "\n"))
    held = sum(is_held_out(e["caption"]) for e in entries)
    print(f"{len(entries)} emoji ({held} held out), atlas {len(atlas) / 1e6:.2f} MB: {ATLAS}, {INDEX}")


if __name__ == "__main__":
    main()
