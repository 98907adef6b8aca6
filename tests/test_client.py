"""cli/client.py: overrides by title, and the command line against the live server (progress, saved outputs)."""
import json

import glance_server as gs
import pytest
from cli import client

PROMPT = {
    "1": {"class_type": "KSampler", "inputs": {"seed": 1, "cfg": 7.0, "model": ["2", 0], "name": "x", "flag": False},
          "_meta": {"title": "Sampler"}},
    "2": {"class_type": "UNETLoader", "inputs": {"unet_name": "a.safetensors"}, "_meta": {"title": "Load"}},
}


def test_overrides_keep_types_and_find_titles():
    out = client.apply_overrides(PROMPT, ["Sampler.seed=5", "Sampler.cfg=4", "Sampler.flag=true", "Load.unet_name=b.safetensors",
                                          "2.unet_name=c.safetensors"])
    assert out["1"]["inputs"]["seed"] == 5 and isinstance(out["1"]["inputs"]["seed"], int)
    assert out["1"]["inputs"]["cfg"] == 4.0 and isinstance(out["1"]["inputs"]["cfg"], float)
    assert out["1"]["inputs"]["flag"] is True
    assert out["2"]["inputs"]["unet_name"] == "c.safetensors"
    assert PROMPT["1"]["inputs"]["seed"] == 1, "the original prompt was modified"


@pytest.mark.parametrize("override, message", [
    ("Nope.seed=1", "no node titled 'Nope'; titles in this workflow: Load, Sampler"),
    ("Sampler.model=x", "connected to node 2"),
    ("Sampler.sed=1", "node 'Sampler' has no input 'sed'; its inputs: cfg, flag, model, name, seed"),
    ("Sampler.seed=abc", "input 'seed' of 'Sampler' takes a whole number, not 'abc'"),
    ("Sampler.seed", "Title.input=value"),
])
def test_bad_overrides_say_what_to_do(override, message):
    with pytest.raises((KeyError, ValueError)) as err:
        client.apply_overrides(PROMPT, [override])
    assert message in str(err.value)


@pytest.mark.host
@pytest.mark.server
def test_command_line_queues_waits_and_saves(live, kit_files, tmp_path, capsys):
    prompt = gs.kit_prompt("stock_two_sampler_baseline", kit_files)
    path = tmp_path / "wf_api.json"
    path.write_text(json.dumps(prompt))
    rc = client.main([str(path), "--server", live.server.url, "--out", str(tmp_path / "out"),
                      "--set", "Slow phase.noise_seed=3", "--set", "Save Image.filename_prefix=cli_test"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    saved = list((tmp_path / "out").glob("cli_test*.png"))
    assert len(saved) == 1 and saved[0].stat().st_size > 0
    assert "running Slow phase" in out.err and "5/5" in out.err  # node lines and progress bars from /ws
    assert "saved" in out.out


@pytest.mark.host
@pytest.mark.server
def test_progress_events_and_upload(live, kit_files, tmp_path):
    image_name = live.client.upload_image(gs.write_emoji_png(tmp_path / "upload_me.png", "rocket, travel and places"))
    assert (live.base_dir / "input" / image_name).is_file()
    prompt = gs.kit_prompt("stock_two_sampler_baseline", kit_files)
    prompt = client.apply_overrides(prompt, {"Slow phase.noise_seed": 11})
    events = []
    entry = live.client.run(prompt, timeout=120, on_event=lambda kind, data: events.append((kind, data)))
    assert entry["status"]["status_str"] == "success"
    progress = [d for k, d in events if k == "progress"]
    assert progress and progress[-1]["value"] == progress[-1]["max"]
    assert any(k == "executing" for k, _ in events)
