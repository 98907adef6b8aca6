"""The shipped workflows in the real ComfyUI frontend, in headless Chromium, on a live server with the pack.

Each UI workflow is dropped on the canvas as a user with its files installed drops it (stand-ins under every
file name it uses): no node type may be missing, no node is shown with errors (frontend 1.49 also marks loaders
whose file the server does not list) and no error is shown, every input of the pack's nodes is shown with a
tooltip, and the frontend's own conversion (``app.graphToPrompt``, what its Run button sends) equals the API
twin. One workflow is then run from the Run button on the small demo kit.

Every test runs on two frontends: the one the host pins (its ``comfyui-frontend-package``) and the newest
(``cli/frontend_cache.py``: fetched once into a cache and served with the host's ``--front-end-root``). When the
newest cannot be had, its tests skip with one line (they fail instead with ``GLANCE_REQUIRE_NEWEST_FRONTEND=1``,
as in CI). Each page first proves that the reader of dialogs, toasts and the busy mask sees them on its frontend.

The previews ``workflows/<name>.jpg`` are made by ``cli/make_previews.py``. ``GLANCE_BROWSER_WORKFLOWS=DIR`` tests
the workflows in DIR instead of ``workflows/`` (used to show that mutated copies fail).
"""
import json
import os
from pathlib import Path

import glance_browser as gb
import glance_server as gs
import pytest
from cli import frontend_cache
from cli.client import ComfyClient
from cli.server import ComfyServer

pytestmark = [pytest.mark.host, pytest.mark.server, pytest.mark.browser]

SKIP = gb.skip_reason()
if SKIP:
    pytest.skip(SKIP, allow_module_level=True)

WORKFLOWS = Path(os.environ.get("GLANCE_BROWSER_WORKFLOWS") or gs.WORKFLOWS)
NAMES = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
RUN = "glance_qwen_image"  # queued from the page: LoRA loader, Glance sigmas and phase sampler on the kit
FRONTENDS = ["pinned", f"newest-{frontend_cache.NEWEST}"]


@pytest.fixture(scope="module")
def installed_files(live, kit_files):
    """Stand-ins under every file the tested workflows name, and the demo kit's files, before the page loads (the
    frontend lists a folder's files in the loaders' options from /object_info when it opens)."""
    return gs.write_stand_ins(live.base_dir, [_twin(name) for name in NAMES])


_newest: list = []  # the outcome of fetching the newest frontend, once per session


def _newest_static() -> Path:
    if not _newest:
        try:
            _newest.append(frontend_cache.static_dir())
        except frontend_cache.FrontendUnavailable as e:
            _newest.append(e)
    if isinstance(_newest[0], Path):
        return _newest[0]
    if os.environ.get("GLANCE_REQUIRE_NEWEST_FRONTEND") == "1":
        pytest.fail(f"the newest frontend is required (GLANCE_REQUIRE_NEWEST_FRONTEND=1): {_newest[0]}")
    pytest.skip(f"newest-frontend browser tests skipped: {_newest[0]}")


@pytest.fixture(scope="session", params=FRONTENDS)
def frontend_root(request):
    """None for the host's own frontend, else the newest frontend's static folder (skips before any server starts
    when it cannot be had)."""
    return None if request.param == "pinned" else _newest_static()


@pytest.fixture(scope="module")
def frontend(frontend_root, live, installed_files):
    """The page of a live server with the pack: the session's server (the host's own frontend), or a second server
    on the same base directory serving the newest frontend (``--front-end-root``)."""
    server, client = live.server, live.client
    if frontend_root is not None:
        server = ComfyServer(live.base_dir, extra_args=["--front-end-root", str(frontend_root)],
                             log_path=live.base_dir / "comfyui-newest-frontend.log").start()
        client = ComfyClient(server.url)
    try:
        client.post_json("/settings", gb.PAGE_SETTINGS)
        with gb.Frontend(server.url) as fe:
            fe.object_info, fe.client = live.object_info(), client
            yield fe
        if not server.alive():
            pytest.fail(f"the ComfyUI server died; log tail:\n{server.log_tail()}")
    finally:
        if server is not live.server:
            server.stop()


def _twin(name: str) -> dict:
    return json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())


def _assert_none(problems: list[str], headline: str) -> None:
    assert not problems, headline + ":\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("name", NAMES)
def test_drop_loads_with_no_missing_node_and_tooltips_on_every_input(frontend, name):
    state = frontend.drop(WORKFLOWS / f"{name}.json")
    frontend.dismiss_dialogs()
    _assert_none(gb.load_problems(state), f"{name}: the frontend does not load it cleanly")
    untold = [f"node {n['id']} ({n['type']}) input '{i['name']}': " + ("no tooltip" if not i["tooltip"] else "not shown")
              for n in state["nodes"] if n["pack"] for i in n["inputs"]
              if not i["tooltip"].strip() or not (i["slot"] or i["widget"])]
    _assert_none(untold, f"{name}: inputs of the pack's nodes without a tooltip or not shown")
    if name.startswith("glance_"):
        assert any(n["pack"] for n in state["nodes"]), f"{name}: no node of the pack in the loaded graph"
    _assert_none(gb.overlapping_nodes(state), f"{name}: nodes drawn over one another on the canvas")


@pytest.mark.parametrize("name", NAMES)
def test_frontend_prompt_equals_api_twin(frontend, name):
    frontend.drop(WORKFLOWS / f"{name}.json")
    frontend.dismiss_dialogs()
    _assert_none(gb.compare_prompts(frontend.graph_to_prompt(), _twin(name), frontend.object_info),
                 f"{name}: the frontend's prompt (app.graphToPrompt) differs from api/{name}.json")


def test_run_button_queues_and_finishes_on_the_small_kit(frontend, kit_files, tmp_path):
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
    entry = frontend.client.wait(prompt_id, timeout=120)
    assert entry["status"]["status_str"] == "success"
    save = next(i for i, n in kit.items() if n["class_type"] == "SaveImage")
    assert entry["outputs"][save]["images"], "Save Image saved nothing"
    frontend.wait_for_images(page_ids[save])
    _assert_none(gb.load_problems(frontend.state()), "the page shows an error after the run")
    shot = frontend.screenshot_canvas(tmp_path / f"{RUN}_after_run.jpg", jpeg=True)
    print(f"screenshot after the run: {shot}")
