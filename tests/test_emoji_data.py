"""The demo kit's data (cli/emoji_data.py): captioned emoji from the committed atlas, a fixed held-out set."""
from __future__ import annotations

import json

import numpy as np

from cli import emoji_data


def test_atlas_loads_as_captioned_colour_images():
    data = emoji_data.load()
    n = len(data.captions)
    assert n > 1800 and data.images.shape == (n, 64, 64, 3) and data.images.dtype == np.uint8
    assert len(set(data.captions)) == n, "captions must be distinct"
    assert "red apple, food and drink" in data.captions
    apple = data.images[data.captions.index("red apple, food and drink")].astype(float)
    assert apple[..., 0].mean() > apple[..., 2].mean() + 20, "the red apple is not red: atlas and index disagree"
    assert (data.images[:, 0, 0] == 255).all(), "emoji are composited on white"
    assert len(data.category_names) == 9
    assert emoji_data.ATLAS.stat().st_size <= 5_000_000


def test_held_out_captions_are_fixed_and_never_in_the_training_split():
    data = emoji_data.load()
    held, train = data.indices(held_out=True), data.indices(held_out=False)
    assert len(held) >= 100 and set(held).isdisjoint(train) and len(held) + len(train) == len(data.captions)
    # Fixed by a hash of the caption, not by position or a random draw: the same on every machine and in every run.
    assert all(emoji_data.is_held_out(data.captions[i]) for i in held)
    assert not any(emoji_data.is_held_out(data.captions[i]) for i in train)
    assert emoji_data.is_held_out("banana, food and drink") and not emoji_data.is_held_out("red apple, food and drink")


def test_index_entries_name_their_source_image():
    entries = json.loads(emoji_data.INDEX.read_text())
    assert all(e["image"].endswith(".png") and e["caption"] == emoji_data.caption(e["name"], e["category"]) for e in entries)
