"""A trajectory file names images only inside its own folder: a shared file cannot make its reader open others."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from pagelens.errors import BadInputError
from pagelens.graph.trajectory import read_trajectories


def _run(url: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}],
                       "images": []})


@pytest.fixture
def folder(tmp_path):
    inside = tmp_path / "runs"
    (inside / "images").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(inside / "images" / "ok.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "secret.png")
    (inside / "images" / "link.png").symlink_to(tmp_path / "secret.png")
    return inside


def test_an_image_inside_the_folder_resolves(folder):
    (folder / "t.jsonl").write_text(_run("images/ok.png") + "\n")
    [run] = read_trajectories(folder / "t.jsonl")
    assert run["messages"][0]["content"][0]["image_url"]["url"] == str(folder / "images" / "ok.png")


@pytest.mark.parametrize("url", ["../secret.png", "images/../../secret.png", "{absolute}", "images/link.png"])
def test_paths_out_of_the_folder_are_refused(folder, tmp_path, url):
    (folder / "t.jsonl").write_text(_run(url.format(absolute=tmp_path / "secret.png")) + "\n")
    with pytest.raises(BadInputError, match="outside the trajectory's folder") as info:
        list(read_trajectories(folder / "t.jsonl"))
    assert "line 1" in str(info.value)
