"""Video discovery, sample ids and prompts: what the workflow reads when it is parsed."""

import json

import pytest

from cosmos_lib import sample_format
from cosmos_lib.inputs import InstructionError, discover_videos, list_videos, load_instruction, prompt_key
from cosmos_lib.naming import video_id, video_ids


@pytest.mark.parametrize(
    "name",
    ["plain.mp4", "with space.mp4", "dots.in.name.mp4", "café séance.mp4", "日本語.mp4", "-lead.mp4", "x" * 200 + ".mp4"],
)
def test_video_id_is_a_valid_prefix_without_dots(name):
    vid = video_id(name)
    assert "." not in vid and " " not in vid
    sample_format.check_prefix(vid)
    sample_format.check_prefix(sample_format.chunk_prefix(vid, 12))
    assert video_id(name) == vid  # stable


def test_clean_names_are_kept_and_unclean_names_get_distinct_hashes():
    assert video_id("robot_arm-01.mp4") == "robot_arm-01"
    a, b = video_id("a b.mp4"), video_id("a.b.mp4")
    assert a != b and a.startswith("a_b-") and b.startswith("a_b-")
    # a clean name that looks like a hashed id does not meet the hashed id of another name
    assert video_id(a + ".mp4") != a


def test_video_ids_do_not_depend_on_other_videos():
    alone = video_ids(["x y.mp4"])
    together = video_ids(["x y.mp4", "x_y.mp4", "x.y.mp4", "other.mp4"])
    assert alone["x y.mp4"] == together["x y.mp4"]
    assert len(set(together.values())) == 4


def test_list_videos_finds_mp4_only(tmp_path):
    for name in ["b.mp4", "a.MP4", "notes.txt", ".hidden.mp4"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "dir.mp4").mkdir()
    assert list_videos(tmp_path) == ["a.MP4", "b.mp4"]
    assert list_videos(tmp_path / "missing") == []


def test_instruction_errors_name_the_file(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"language_instruction_0": "pick up the cube"}))
    assert load_instruction(good) == "pick up the cube"
    cases = {
        "missing.json": (None, "missing"),
        "bad.json": ("{not json", "not valid JSON"),
        "nokey.json": (json.dumps({"other": 1}), "no key"),
        "empty.json": (json.dumps({"language_instruction_0": "  "}), "empty"),
        "notstr.json": (json.dumps({"language_instruction_0": 3}), "empty"),
    }
    for name, (content, reason) in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_text(content)
        with pytest.raises(InstructionError, match=reason) as info:
            load_instruction(path)
        assert str(path) in str(info.value)


def test_discover_videos_with_instructions_keeps_bad_ones_as_errors(tmp_path):
    videos, instr = tmp_path / "videos", tmp_path / "instructions"
    videos.mkdir()
    instr.mkdir()
    for stem in ["ok1", "ok2", "same", "broken", "lost"]:
        (videos / f"{stem}.mp4").write_bytes(b"")
    (instr / "ok1.json").write_text(json.dumps({"language_instruction_0": "open the drawer"}))
    (instr / "ok2.json").write_text(json.dumps({"language_instruction_0": "close the drawer"}))
    (instr / "same.json").write_text(json.dumps({"language_instruction_0": "open the drawer"}))
    (instr / "broken.json").write_text("{")
    found = discover_videos(videos, prompt="unused", text_encoder="google-t5/t5-11b", instructions=instr)
    assert found["ok1"].prompt == "open the drawer"
    assert found["ok1"].prompt_key == found["same"].prompt_key != found["ok2"].prompt_key
    assert found["broken"].prompt is None and "not valid JSON" in found["broken"].error
    assert found["lost"].prompt is None and "missing" in found["lost"].error and found["lost"].instruction_path is None


def test_discover_videos_global_prompt_and_expected(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"")
    found = discover_videos(tmp_path, prompt="A video of sks teal robot.", text_encoder="t5", expected=["made later.mp4"])
    assert set(found) == {"a", video_id("made later.mp4")}
    assert {v.prompt_key for v in found.values()} == {prompt_key("A video of sks teal robot.", "t5")}
    # another text encoder, other embedding files
    assert prompt_key("A video of sks teal robot.", "t5") != prompt_key("A video of sks teal robot.", "other")
    with pytest.raises(InstructionError, match="prompt"):
        discover_videos(tmp_path, prompt="   ", text_encoder="t5")
