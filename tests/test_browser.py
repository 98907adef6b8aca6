"""The shipped workflows in the real ComfyUI frontend, in headless Chromium, on a live server with the pack.

Each UI workflow is dropped on the canvas as a user with its files installed drops it (stand-ins under every
file name it uses): no node type may be missing, no node is shown with errors (frontend 1.49 also marks loaders
whose file the server does not list) and no error is shown, every input of the pack's nodes is shown with a
tooltip, and the frontend's own conversion (``app.graphToPrompt``, what its Run button sends) equals the API
twin. One workflow is then run from the Run button on the small demo kit.

Screenshots go to the test's tmp folder; ``GLANCE_UPDATE_PREVIEWS=1`` also writes them as the previews
``workflows/<name>.jpg`` (the file the host's template browser shows). ``GLANCE_BROWSER_WORKFLOWS=DIR`` tests
the workflows in DIR instead of ``workflows/`` (used to show that mutated copies fail).
"""
import json
import os
import shutil
from pathlib import Path

import glance_browser as gb
import glance_server as gs
import pytest

pytestmark = [pytest.mark.host, pytest.mark.server, pytest.mark.browser]

SKIP = gb.skip_reason()
if SKIP:
    pytest.skip(SKIP, allow_module_level=True)

WORKFLOWS = Path(os.environ.get("GLANCE_BROWSER_WORKFLOWS") or gs.WORKFLOWS)
NAMES = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
RUN = "glance_qwen_image"  # queued from the page: LoRA loader, Glance sigmas and phase sampler on the kit
UPDATE_PREVIEWS = os.environ.get("GLANCE_UPDATE_PREVIEWS") == "1" and WORKFLOWS == gs.WORKFLOWS
# Settings a returning user may have: no first-run template browser; for the screenshots, no minimap or canvas
# statistics over the graph, and full detail (text) at the zoom that fits a whole workflow.
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False, "Comfy.Graph.CanvasInfo": False,
            "LiteGraph.Canvas.MinFontSizeForLOD": 0}


@pytest.fixture(scope="module")
def installed_files(live, kit_files):
    """Stand-ins under every file the tested workflows name, and the demo kit's files, before the page loads (the
    frontend lists a folder's files in the loaders' options from /object_info when it opens)."""
    return gs.write_stand_ins(live.base_dir, [_twin(name) for name in NAMES])


@pytest.fixture(scope="module")
def frontend(live, installed_files):
    live.client.post_json("/settings", SETTINGS)
    with gb.Frontend(live.server.url) as fe:
        fe.object_info = live.object_info()
        yield fe


def _twin(name: str) -> dict:
    return json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())


def _save_preview(shot: Path, name: str) -> None:
    if UPDATE_PREVIEWS:
        shutil.copyfile(shot, gs.WORKFLOWS / f"{name}.jpg")


def _assert_none(problems: list[str], headline: str) -> None:
    assert not problems, headline + ":\n  " + "\n  ".join(problems)


def _load_problems(state: dict) -> list[str]:
    problems = [f"node type not registered in the frontend: {t}" for t in state["unregistered"]]
    problems += [f"node {n['id']} ({n['type']}) is shown with errors" for n in state["nodes"]
                 if n["has_errors"] and n["type"] not in state["unregistered"]]
    problems += [f"dialog shown: {d}" for d in state["dialogs"]]
    problems += [f"toast shown: {t}" for t in state["toasts"]]
    problems += [f"error notice shown: {t}" for t in state["notices"]]
    return problems


@pytest.mark.parametrize("name", NAMES)
def test_drop_loads_with_no_missing_node_and_tooltips_on_every_input(frontend, tmp_path, name):
    state = frontend.drop(WORKFLOWS / f"{name}.json")
    frontend.dismiss_dialogs()
    _assert_none(_load_problems(state), f"{name}: the frontend does not load it cleanly")
    untold = [f"node {n['id']} ({n['type']}) input '{i['name']}': " + ("no tooltip" if not i["tooltip"] else "not shown")
              for n in state["nodes"] if n["pack"] for i in n["inputs"]
              if not i["tooltip"].strip() or not (i["slot"] or i["widget"])]
    _assert_none(untold, f"{name}: inputs of the pack's nodes without a tooltip or not shown")
    if name.startswith("glance_"):
        assert any(n["pack"] for n in state["nodes"]), f"{name}: no node of the pack in the loaded graph"
    if name != RUN:
        _save_preview(frontend.screenshot_canvas(tmp_path / f"{name}.jpg", jpeg=True), name)


@pytest.mark.parametrize("name", NAMES)
def test_frontend_prompt_equals_api_twin(frontend, name):
    frontend.drop(WORKFLOWS / f"{name}.json")
    frontend.dismiss_dialogs()
    _assert_none(gb.compare_prompts(frontend.graph_to_prompt(), _twin(name), frontend.object_info),
                 f"{name}: the frontend's prompt (app.graphToPrompt) differs from api/{name}.json")


def test_run_button_queues_and_finishes_on_the_small_kit(live, kit_files, frontend, tmp_path):
    """The loaders are pointed at the kit as a user picks files in the widgets; then Run, wait, no error shown."""
    if RUN not in NAMES:
        pytest.skip(f"{RUN} is not among the tested workflows")
    frontend.drop(WORKFLOWS / f"{RUN}.json")
    frontend.dismiss_dialogs()
    twin, kit = _twin(RUN), gs.kit_prompt(RUN, kit_files)
    page_ids = {twin_id: front_id for front_id, twin_id in gb.match_ids(frontend.graph_to_prompt(), twin)[0].items()}
    edits = [(page_ids[i], k, v) for i, node in kit.items() for k, v in node["inputs"].items()
             if not isinstance(v, list) and twin[i]["inputs"].get(k) != v]
    assert edits, "the kit changes no widget"
    assert frontend.set_widgets(edits) == []
    _assert_none(gb.compare_prompts(frontend.graph_to_prompt(), kit, frontend.object_info), "the page's prompt is not the kit prompt")

    prompt_id = frontend.click_run()
    entry = live.client.wait(prompt_id, timeout=120)
    assert entry["status"]["status_str"] == "success"
    save = next(i for i, n in kit.items() if n["class_type"] == "SaveImage")
    assert entry["outputs"][save]["images"], "Save Image saved nothing"
    frontend.wait_for_images(page_ids[save])
    _assert_none(_load_problems(frontend.state()), "the page shows an error after the run")
    shot = frontend.screenshot_canvas(tmp_path / f"{RUN}_after_run.jpg", jpeg=True)
    print(f"screenshot after the run: {shot}")
    _save_preview(shot, RUN)
