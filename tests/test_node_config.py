"""bf-node settings: file, then environment, then flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from blenderfarm.node.cli import make_config, parse_args
from blenderfarm.node.config import NodeConfig


def test_file_then_env_then_flags(tmp_path: Path, monkeypatch) -> None:
    conf = tmp_path / "node.toml"
    conf.write_text('[node]\nserver = "http://farm:1"\nname = "from-file"\nthreads = 4\n'
                    'tags = ["gpu"]\nwatchdog = 120.0\n')
    monkeypatch.setenv("BLENDERFARM_SERVER", "http://env:2")
    cfg = make_config(parse_args(["--config", str(conf), "--name", "from-flag",
                                  "--work-dir", str(tmp_path / "w")]))
    assert (cfg.server, cfg.name, cfg.threads, cfg.tags, cfg.watchdog) == (
        "http://env:2", "from-flag", 4, ["gpu"], 120.0)
    assert cfg.work_dir == (tmp_path / "w").resolve()


def test_bad_config_files_are_refused_clearly(tmp_path: Path) -> None:
    conf = tmp_path / "node.toml"
    conf.write_text("[node]\nservr = 'x'\n")
    with pytest.raises(ValueError, match="unknown setting 'servr'"):
        make_config(parse_args(["--config", str(conf)]))
    conf.write_text("[node\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        make_config(parse_args(["--config", str(conf)]))
    with pytest.raises(ValueError, match="not found"):
        make_config(parse_args(["--config", str(tmp_path / "nope.toml")]))


def test_cache_size_from_file_then_flag(tmp_path: Path) -> None:
    conf = tmp_path / "node.toml"
    conf.write_text('[node]\ncache_size = "1.5G"\n')
    assert make_config(parse_args(["--config", str(conf)])).cache_size == 3 * 1024**3 // 2
    cfg = make_config(parse_args(["--config", str(conf), "--cache-size", "500m"]))
    assert cfg.cache_size == 500 * 1024**2
    conf.write_text("[node]\ncache_size = 4096\n")
    assert make_config(parse_args(["--config", str(conf)])).cache_size == 4096
    assert NodeConfig().cache_size == 20 * 1024**3


@pytest.mark.parametrize("bad", ["lots", "-1G", "20 X", "", "1e3"])
def test_a_cache_size_that_is_no_size_is_refused_clearly(bad: str) -> None:
    with pytest.raises(ValueError, match="cache_size must be a size such as 20G"):
        make_config(parse_args([f"--cache-size={bad}"]))


@pytest.mark.parametrize("bad", ["has space", "-gpu", "x" * 65, "gpu/1"])
def test_a_node_tag_the_server_would_refuse_is_refused_at_start(bad: str) -> None:
    with pytest.raises(ValueError, match="a tag is 1 to 64 letters"):
        make_config(parse_args(["--tag", "gpu", f"--tag={bad}"]))


def test_blenders_and_slots_from_the_file_then_flags(tmp_path: Path) -> None:
    conf = tmp_path / "node.toml"
    conf.write_text('[node]\nblender = ["/opt/b34/blender", "/opt/b50/blender"]\n'
                    'slots = "all-gpus"\ncpu_slot = true\ncpu_slots = 2\n')
    cfg = make_config(parse_args(["--config", str(conf)]))
    assert cfg.blender_paths() == ["/opt/b34/blender", "/opt/b50/blender"]
    assert (cfg.slots, cfg.cpu_slot, cfg.cpu_slots) == ("all-gpus", True, 2)
    cfg = make_config(parse_args(["--config", str(conf), "--blender", "/a", "--blender", "/b",
                                  "--slots", "per-gpu", "--cpu-slots", "3"]))
    assert cfg.blender_paths() == ["/a", "/b"]
    assert (cfg.slots, cfg.cpu_slots) == ("per-gpu", 3)
    conf.write_text('[node]\nblender = "/opt/b34/blender"\n')
    assert make_config(parse_args(["--config", str(conf)])).blender_paths() == ["/opt/b34/blender"]
    assert NodeConfig().blender_paths() == [None]  # $BLENDER, then PATH, as before


@pytest.mark.parametrize(("setting", "message"), [
    ('slots = "gpu"', "slots must be one of per-gpu, all-gpus, cpu, not 'gpu'"),
    ("cpu_slots = 0", "cpu_slots must be a whole number from 1 to 64, not 0"),
    ('cpu_slots = "2"', "cpu_slots must be a whole number from 1 to 64, not '2'"),
    ("blender = [1]", "blender must be a path or a list of paths"),
    ('cpu_slot = "yes"', "cpu_slot must be true or false, not 'yes'"),
    ("blender = []", None),
])
def test_bad_blender_and_slot_settings_are_refused_clearly(tmp_path: Path, setting: str,
                                                           message: str | None) -> None:
    conf = tmp_path / "node.toml"
    conf.write_text(f"[node]\n{setting}\n")
    if message is None:  # an empty list: find one as the node always did
        assert make_config(parse_args(["--config", str(conf)])).blender_paths() == [None]
        return
    with pytest.raises(ValueError, match=message):
        make_config(parse_args(["--config", str(conf)]))
