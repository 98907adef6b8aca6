"""The workflow previews (``workflows/<name>.jpg``, what the host's template browser shows) show the workflow as it
is shipped: each carries, in its JPEG comment, the sha256 of the workflow file it was made from
(``cli/make_previews.py`` writes it), so a workflow that changes without a new preview fails here."""
import hashlib
import re
from pathlib import Path

import pytest

WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"
NAMES = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
Image = pytest.importorskip("PIL.Image", reason="previews not checked: Pillow is missing (pip install pillow)")


def test_there_are_workflows():
    assert NAMES, f"no workflows in {WORKFLOWS}"


@pytest.mark.parametrize("name", NAMES)
def test_preview_carries_the_hash_of_its_workflow(name):
    jpg = WORKFLOWS / f"{name}.jpg"
    fix = f"run: python cli/make_previews.py {name}"
    assert jpg.is_file(), f"workflows/{name}.json has no preview workflows/{name}.jpg ({fix})"
    with Image.open(jpg) as im:
        assert im.format == "JPEG" and im.width >= 800 and im.height >= 500, f"{jpg.name}: {im.format} {im.size}"
        comment = im.info.get("comment", b"")
    found = re.search(rb"workflows/([\w.-]+)\.json sha256=([0-9a-f]{64})", comment)
    assert found, f"{jpg.name} carries no workflow hash in its JPEG comment ({fix})"
    assert found.group(1).decode() == name, f"{jpg.name} is the preview of {found.group(1).decode()}.json"
    want = hashlib.sha256((WORKFLOWS / f"{name}.json").read_bytes()).hexdigest()
    assert found.group(2).decode() == want, f"workflows/{name}.json changed since its preview was made ({fix})"
