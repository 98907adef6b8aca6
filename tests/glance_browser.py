"""Drive the real ComfyUI frontend (the host's ``comfyui-frontend-package``) in headless Chromium.

Debian's ``chromium`` is launched by Playwright through its own executable (no browser download). ``Frontend``
opens the page of a live server, drops workflow files on it the way a user does, reads back what the page made
of them (missing node types, nodes shown with errors, dialogs, toasts and error notices, the pack's inputs and
tooltips, ``app.graphToPrompt()``) and clicks its Run button. Works with the frontends of ComfyUI v0.3.64 (1.27)
and v0.33 (1.49), and the newest (1.58, Reka UI instead of PrimeVue; ``frontend_cache.py`` fetches it); when a page
opens, the reader proves that it sees a dialog, a toast and the busy mask on that frontend (``prove_reader``).
``compare_prompts`` matches the frontend's prompt to an API twin node by node (ids may differ).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import glance_server as gs

PACK_MODULE = "custom_nodes.comfyui-glance"
# Playwright adds --headless and a fresh temporary --user-data-dir itself.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1920, "height": 1200}
# Settings a returning user may have (POST /settings before the page opens): no first-run template browser; for the
# screenshots, no minimap or canvas statistics over the graph, and full detail (text) at the zoom that fits a whole
# workflow.
PAGE_SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False, "Comfy.Graph.CanvasInfo": False,
                 "LiteGraph.Canvas.MinFontSizeForLOD": 0}


def find_chromium() -> str | None:
    """``GLANCE_CHROMIUM`` when set, else Debian's ``/usr/bin/chromium``, else ``chromium`` on PATH."""
    env = os.environ.get("GLANCE_CHROMIUM")
    for candidate in ([env] if env else ["/usr/bin/chromium", shutil.which("chromium")]):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def skip_reason() -> str | None:
    """One line saying why the browser tests cannot run here, or None."""
    if find_chromium() is None:
        return "browser tests skipped: Chromium not found (apt-get install chromium, or set GLANCE_CHROMIUM to its executable)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "browser tests skipped: Playwright's Python driver is missing (pip install playwright)"
    return None


# --- in-page scripts (frontends 1.27 and 1.49: window.app, window.LiteGraph) -----------------------------

_DROP = """async ([text, name]) => {
  const dt = new DataTransfer();
  dt.items.add(new File([text], name, {type: 'application/json'}));
  const ev = new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true});
  document.dispatchEvent(ev);
}"""

_ACTIVE = "() => (window.app.extensionManager.workflow.activeWorkflow || {}).path || ''"

# Loaded: the drop opened a new workflow tab (each drop does, "name (2)" for a repeat) holding the file's nodes.
_LOADED = """([ids, before]) => {
  const active = (window.app.extensionManager.workflow.activeWorkflow || {}).path || '';
  const have = window.app.graph.nodes.map(n => n.id).sort((a, b) => a - b).join(',');
  return active !== before && have === ids;
}"""

# What the page shows over the graph, on every frontend the tests run: PrimeVue (1.27, 1.49) and Reka UI (1.58).
# ``Frontend.prove_reader`` raises each of these through the app's own API when a page opens and fails unless the
# reader sees it, so a frontend that renames them fails loudly instead of letting the checks pass without looking.
#  - dialogs: PrimeVue ``.p-dialog`` (visible); Reka ``[role=dialog][data-state=open]``.
#  - toasts (error and warning): PrimeVue ``.p-toast-message-error/-warn``; Reka ``li[data-testid="toast"]``
#    with ``data-toast-kind`` error or warning and ``data-state="open"``, inside ``ol[data-testid="toast-viewport"]``.
#  - the busy mask: the page covers itself while it starts and while it handles a drop (workspace ``spinner``);
#    PrimeVue BlockUI's ``.p-blockui-mask``, 1.58's ``[data-testid="app-loading-overlay"]`` (shown, aria-busy).
#    Acting before it is gone is not what a user can do, and on 1.49 a drop during the start's mask fade-out
#    leaves a mask behind for good (the new mask is removed in place of the old one), which then takes every click.
#  - error notices: 1.49 no longer opens a dialog for missing node types, models or media: it shows an error
#    overlay ("Missing node: ...", "6 errors found") in the corner of the canvas, and marks the nodes it names with
#    has_errors.
_ERROR_OVERLAY = '[data-testid="error-overlay"]'
DIALOGS = '.p-dialog, [role="dialog"][data-state="open"]'
TOASTS = ('.p-toast-message-error, .p-toast-message-warn, '
          '[data-testid="toast-viewport"] li[data-testid="toast"][data-state="open"][data-toast-kind="error"], '
          '[data-testid="toast-viewport"] li[data-testid="toast"][data-state="open"][data-toast-kind="warning"]')
BUSY = '.p-blockui-mask, [data-testid="app-loading-overlay"][aria-busy="true"]'

# The reader: one expression, used by every check of the page.
_READ = """(() => {
  const shown = sel => Array.from(document.querySelectorAll(sel)).filter(e => e.getClientRects().length > 0);
  const text = e => e.innerText.replace(/\\s+/g, ' ').slice(0, 300);
  return {dialogs: shown('%s').map(text), toasts: shown('%s').map(text), busy: shown('%s').length > 0,
          notices: shown('%s').map(text)};
})()""" % (DIALOGS, TOASTS, BUSY, _ERROR_OVERLAY)

_IDLE = "() => !%s.busy" % _READ

_STATE = """(types) => {
  if (!types) types = [...new Set(window.app.graph.nodes.map(n => n.type))];
  const registered = window.LiteGraph.registered_node_types;
  const seen = %s;
  const nodes = window.app.graph.nodes.map(n => {
    const def = n.constructor.nodeData;
    const inputs = [];
    if (def && def.python_module === '%s') {
      for (const section of ['required', 'optional']) {
        for (const [name, spec] of Object.entries((def.input || {})[section] || {})) {
          const opts = spec[1] || {};
          inputs.push({name, tooltip: opts.tooltip || '',
                       slot: (n.inputs || []).some(i => i.name === name),
                       widget: (n.widgets || []).some(w => w.name === name)});
        }
      }
    }
    const box = Array.from(n.boundingRect || n.getBounding());  // [x, y, w, h] with the title bar, as drawn
    return {id: n.id, type: n.type, title: n.title, has_errors: !!n.has_errors, registered: n.type in registered,
            pack: !!def && def.python_module === '%s', inputs, box};
  });
  return {nodes, dialogs: seen.dialogs, toasts: seen.toasts, notices: seen.notices, busy: seen.busy,
          unregistered: types.filter(t => !(t in registered))};
}""" % (_READ, PACK_MODULE, PACK_MODULE)

_WIDGETS = """(values) => {
  const missing = [];
  for (const [id, name, value] of values) {
    const node = window.app.graph.getNodeById(Number(id));
    const widget = node && (node.widgets || []).find(w => w.name === name);
    if (!widget) { missing.push(id + '.' + name); continue; }
    let options = widget.type === 'combo' && widget.options ? widget.options.values : null;
    if (typeof options === 'function') options = options(widget, node);
    if (Array.isArray(options) && !options.includes(value)) {
      missing.push(id + '.' + name + ' = ' + JSON.stringify(value) + ' (not among its options)');
      continue;
    }
    widget.value = value;
    if (widget.callback) widget.callback(value);
  }
  window.app.graph.setDirtyCanvas(true, true);
  return missing;
}"""


class Frontend:
    """One headless Chromium with the frontend of ``url`` open (``with Frontend(url) as fe: ...``)."""

    def __init__(self, url: str, chromium: str | None = None):
        self.url = url
        self.chromium = chromium or find_chromium()

    def __enter__(self) -> "Frontend":
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        try:
            self.browser = self._pw.chromium.launch(executable_path=self.chromium, headless=True, args=FLAGS)
            self.page = self.browser.new_page(viewport=VIEWPORT)
            self.page.goto(self.url)
            self.page.wait_for_function("window.app && window.app.graph && window.LiteGraph && "
                                        "Object.keys(window.LiteGraph.registered_node_types).length > 0",
                                        timeout=60_000)
            self.page.wait_for_function(_IDLE, timeout=60_000)
            self.version = self.page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__ || '?'")
            self.prove_reader()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        browser = getattr(self, "browser", None)
        if browser is not None:
            browser.close()
        self._pw.stop()

    def drop(self, path: Path, graph: dict | None = None) -> dict:
        """Drop a UI workflow file on the page (as the user does); returns what the page shows (``_STATE``)."""
        text = path.read_text() if graph is None else json.dumps(graph)
        graph = json.loads(text)
        ids = ",".join(str(i) for i in sorted(n["id"] for n in graph["nodes"]))
        before = self.page.evaluate(_ACTIVE)
        self.page.evaluate(_DROP, [text, path.name])
        self.page.wait_for_function(_LOADED, arg=[ids, before], timeout=30_000)
        self.page.wait_for_function(_IDLE, timeout=30_000)
        self.page.evaluate("() => window.app.extensionManager.command.execute('Comfy.Canvas.FitView')")
        self.page.wait_for_timeout(300)  # dialogs and toasts of the load appear within a frame or two
        return self.page.evaluate(_STATE, sorted({n["type"] for n in graph["nodes"]}))

    def read(self) -> dict:
        """The dialogs, error and warning toasts, error notices shown, and whether the busy mask is up."""
        return self.page.evaluate("() => " + _READ)

    def prove_reader(self, timeout_ms: int = 5_000) -> None:
        """Raise a toast, a dialog and the busy mask through the app's own API (``app.extensionManager``:
        ``toast.add``, ``dialog.confirm``, ``spinner``; the same on 1.27, 1.49 and 1.58) and fail unless the reader
        sees each, then take them away and fail unless it sees them gone: the page checks can see what they look for
        on this frontend."""
        tag = f"glance-probe-{os.getpid()}-{id(self):x}"
        where = f"frontend {self.version} at {self.url}"
        fix = "update the lookups (DIALOGS, TOASTS, BUSY) in tests/glance_browser.py for this frontend"

        def wait(condition: str, what: str) -> None:
            try:
                self.page.wait_for_function("([tag]) => { const seen = %s; return %s; }" % (_READ, condition),
                                            arg=[tag], timeout=timeout_ms)
            except Exception as e:  # playwright's TimeoutError
                raise AssertionError(f"page-state reader: {what} on {where} (it reads {self.read()}): {fix}") from e

        self.page.evaluate("""([tag]) => {
          const em = window.app.extensionManager;
          em.toast.add({severity: 'error', summary: tag + ' toast', detail: 'probe', life: 60000});
          em.dialog.confirm({title: tag + ' dialog', message: 'probe'});
        }""", [tag])
        wait("seen.toasts.some(t => t.includes(tag + ' toast'))", "an error toast raised by toast.add is not seen")
        wait("seen.dialogs.some(t => t.includes(tag + ' dialog'))", "a dialog raised by dialog.confirm is not seen")
        self.page.keyboard.press("Escape")
        self.page.evaluate("() => { const t = window.app.extensionManager.toast; (t.removeAll || t.dismissAll).call(t); }")
        wait("!seen.toasts.some(t => t.includes(tag)) && !seen.dialogs.some(t => t.includes(tag))",
             "the probe toast or dialog is still seen after it was closed")
        self.page.evaluate("() => { window.app.extensionManager.spinner = true; }")
        wait("seen.busy", "the busy mask (workspace spinner) is not seen")
        self.page.evaluate("() => { window.app.extensionManager.spinner = false; }")
        wait("!seen.busy", "the busy mask is still seen after the spinner stopped")

    def state(self) -> dict:
        """What the page shows for the open graph (node types, errors, dialogs, toasts, the pack's inputs)."""
        return self.page.evaluate(_STATE, None)

    def dismiss_dialogs(self) -> None:
        """Close open dialogs (Escape) and error notices (their close button), as a user does, so that the next
        drop starts clean."""
        for _ in range(3):
            if not self.read()["dialogs"]:
                break
            self.page.keyboard.press("Escape")
            self.page.wait_for_timeout(200)
        close = self.page.locator(f'{_ERROR_OVERLAY} [data-testid="error-overlay-dismiss"]')
        for i in range(close.count()):
            if close.nth(i).is_visible():
                close.nth(i).click()
        self.page.wait_for_timeout(200)

    def wait_for_images(self, node_id, timeout_ms: int = 30_000) -> None:
        """Wait until the page shows the images a node output (its executed message reached the page)."""
        self.page.wait_for_function(
            "(id) => { const n = window.app.graph.getNodeById(Number(id)); return !!(n && n.imgs && n.imgs.length); }",
            arg=str(node_id), timeout=timeout_ms)

    def graph_to_prompt(self) -> dict:
        """The frontend's own conversion of the open graph (what the Run button sends to /prompt)."""
        return self.page.evaluate("async () => (await window.app.graphToPrompt()).output")

    def set_widgets(self, values: list[tuple[str, str, object]]) -> list[str]:
        """Set widgets (node id, widget name, value) as a user picking values would; returns those not found, and
        combo values that are not among the widget's options (what the user can pick from)."""
        return self.page.evaluate(_WIDGETS, [list(v) for v in values])

    def click_run(self) -> str:
        """Click the Run (queue) button; returns the prompt id the server gave the page's POST /prompt.

        1.27 puts ``data-testid="queue-button"`` on a split button (Run is its first button, the mode menu its
        second); 1.49 puts it on the Run button itself."""
        button = self.page.locator('button[data-testid="queue-button"], '
                                   '[data-testid="queue-button"]:not(button) button').first
        with self.page.expect_response(lambda r: r.url.endswith("/prompt") and r.request.method == "POST") as info:
            button.click()
        response = info.value
        body = response.json()
        if response.status != 200:
            raise AssertionError(f"POST /prompt from the page was refused ({response.status}): {body}")
        return body["prompt_id"]

    def screenshot_canvas(self, path: Path, jpeg: bool = False) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        kwargs = {"type": "jpeg", "quality": 85} if jpeg else {"type": "png"}
        focus = "() => window.app.extensionManager.command.execute('Workspace.ToggleFocusMode')"
        self.page.evaluate(focus)  # the graph alone, without menus and side bars
        try:
            self.page.wait_for_timeout(300)
            self.page.evaluate("() => window.app.extensionManager.command.execute('Comfy.Canvas.FitView')")
            self.page.wait_for_timeout(300)
            self.page.locator("#graph-canvas").screenshot(path=str(path), **kwargs)
        finally:
            self.page.evaluate(focus)
        return path


def load_problems(state: dict) -> list[str]:
    """What is wrong on the page after a load (``Frontend.drop`` / ``state``): node types the frontend does not know,
    nodes shown with errors, dialogs, error and warning toasts, error notices."""
    problems = [f"node type not registered in the frontend: {t}" for t in state["unregistered"]]
    problems += [f"node {n['id']} ({n['type']}) is shown with errors" for n in state["nodes"]
                 if n["has_errors"] and n["type"] not in state["unregistered"]]
    problems += [f"dialog shown: {d}" for d in state["dialogs"]]
    problems += [f"toast shown: {t}" for t in state["toasts"]]
    problems += [f"error notice shown: {t}" for t in state["notices"]]
    return problems


def overlapping_nodes(state: dict, margin: float = 0.0) -> list[str]:
    """Pairs of nodes whose drawn boxes (``state["nodes"][i]["box"]``, title bar included) overlap."""
    nodes, out = state["nodes"], []
    for i, a in enumerate(nodes):
        ax, ay, aw, ah = a["box"]
        for b in nodes[i + 1:]:
            bx, by, bw, bh = b["box"]
            w = min(ax + aw, bx + bw) - max(ax, bx)
            h = min(ay + ah, by + bh) - max(ay, by)
            if w > margin and h > margin:
                out.append(f"node {a['id']} ({a['title']!r}) and node {b['id']} ({b['title']!r}) overlap by "
                           f"{w:.0f} x {h:.0f} px")
    return out


# --- the frontend's prompt against an API twin -------------------------------------------------------------

def match_ids(front: dict, twin: dict) -> tuple[dict, list[str]]:
    """{frontend id: twin id}, by (class_type, title) and then by order among equal keys."""
    def key(node):
        return node["class_type"], node.get("_meta", {}).get("title")

    pool: dict = {}
    for twin_id, node in twin.items():
        pool.setdefault(key(node), []).append(twin_id)
    mapping, problems = {}, []
    for front_id, node in front.items():
        candidates = pool.get(key(node))
        if candidates:
            mapping[front_id] = candidates.pop(0)
        else:
            problems.append(f"frontend node {front_id} ({node['class_type']}, title {key(node)[1]!r}) has no twin")
    for (cls, title), left in pool.items():
        problems += [f"twin node {i} ({cls}, title {title!r}) is not in the frontend's prompt" for i in left]
    return mapping, problems


def compare_prompts(front: dict, twin: dict, object_info: dict) -> list[str]:
    """Differences between the frontend's prompt and an API twin (node types, links, widget values); an input
    that a newer host added is no difference at its default value."""
    mapping, problems = match_ids(front, twin)
    for front_id, twin_id in mapping.items():
        f_node, t_node = front[front_id], twin[twin_id]
        where = f"node {twin_id} ({t_node['class_type']}, {t_node.get('_meta', {}).get('title')!r})"
        f_inputs, t_inputs = f_node["inputs"], t_node["inputs"]
        for name in sorted(set(f_inputs) | set(t_inputs)):
            if name not in f_inputs:
                problems.append(f"{where}: input '{name}' = {t_inputs[name]!r} in the twin, absent in the frontend's prompt")
                continue
            if name not in t_inputs:
                if gs.added_by_host(t_node["class_type"], name, f_inputs[name], object_info):
                    continue
                problems.append(f"{where}: input '{name}' = {f_inputs[name]!r} in the frontend's prompt, absent in the twin")
                continue
            value, expected = f_inputs[name], t_inputs[name]
            if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
                value = [mapping.get(str(value[0]), f"?{value[0]}"), value[1]]
            if value != expected or isinstance(value, bool) != isinstance(expected, bool):
                problems.append(f"{where}: input '{name}': frontend {value!r} != twin {expected!r}")
    return problems
