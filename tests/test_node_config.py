"""bf-node settings: file, then environment, then flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from blenderfarm.node.cli import make_config, parse_args


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
