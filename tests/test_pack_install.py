"""The pack as users install it: loads into a live ComfyUI server with nothing of its own in the log,
and every node shows a description and a tooltip on every input."""
import pytest

pytestmark = [pytest.mark.host, pytest.mark.server]

PACK_NODES = {
    "GlancePhaseKSampler": "sampling/glance",
    "GlancePhaseGuider": "sampling/glance",
    "GlanceSigmas": "sampling/glance",
    "GlanceLoraLoader": "sampling/glance",
    "GlanceTrainLoRA": "training/glance",
}


def test_server_log_has_nothing_of_ours_but_the_import_time(live):
    log = live.server.log_path.read_text(errors="replace")
    assert "Starting server" in log
    ours = [line for line in log.splitlines() if "glance" in line.lower()]
    import_lines = [line for line in ours if "seconds" in line and "custom_nodes" in line]
    assert len(import_lines) == 1 and "IMPORT FAILED" not in import_lines[0], ours
    assert ours == import_lines, f"the pack logged at start-up: {ours}"


def test_nodes_have_descriptions_categories_and_tooltips(live):
    info = live.object_info()
    for node_id, category in PACK_NODES.items():
        node = info[node_id]
        assert node["category"] == category and node["description"].strip(), node_id
        inputs = {**node["input"].get("required", {}), **node["input"].get("optional", {})}
        assert inputs, node_id
        untipped = [name for name, spec in inputs.items() if len(spec) < 2 or not spec[1].get("tooltip")]
        assert not untipped, f"{node_id} inputs without a tooltip: {untipped}"
