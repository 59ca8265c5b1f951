"""What ``bf`` shows a person: progress bars, rates, ETAs, tables, settings, errors.

Pure functions are tested directly; the error boundary is tested against a real
closed port, not a mock.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blenderfarm.client import progress as fmt
from blenderfarm.client.api import ApiError, Client, ServerUnreachable
from blenderfarm.client.cli import (
    DEFAULT_SERVER,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    build_parser,
    main,
    resolve_settings,
)


@pytest.mark.parametrize(("n", "text"), [
    (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
    (5 * 1024**2, "5.0 MiB"), (3 * 1024**4, "3.0 TiB"), (2048 * 1024**4, "2048.0 TiB"),
])
def test_format_bytes(n: int, text: str) -> None:
    assert fmt.format_bytes(n) == text


@pytest.mark.parametrize(("seconds", "text"), [
    (None, "--"), (-1, "--"), (float("inf"), "--"), (float("nan"), "--"),
    (0, "0s"), (59.4, "59s"), (75, "1m15s"), (3599, "59m59s"), (3725, "1h02m"),
    (90000, "1d01h"),
])
def test_format_duration(seconds: float | None, text: str) -> None:
    assert fmt.format_duration(seconds) == text


def test_format_age() -> None:
    assert fmt.format_age(100.0, 175.0) == "1m15s ago"
    assert fmt.format_age(None, 1.0) == "--"
    assert fmt.format_age(200.0, 100.0) == "0s ago"  # clocks disagree: never negative


@given(st.floats(-1, 2, allow_nan=False), st.integers(3, 200))
def test_bar_has_the_width_asked(fraction: float, width: int) -> None:
    b = fmt.bar(fraction, width)
    assert len(b) == width and b[0] == "[" and b[-1] == "]"


def test_bar_fill() -> None:
    assert fmt.bar(0.5, 12) == "[#####-----]"
    assert fmt.bar(1.0, 6) == "[####]"
    assert fmt.bar(0.0, 6) == "[----]"


def test_rate_needs_a_completed_frame() -> None:
    r = fmt.RateWindow(window=60)
    assert r.rate_per_min(0) is None
    r.add(0, 5)
    r.add(10, 5)
    assert r.rate_per_min(10) is None  # nothing finished while we watched


def test_rate_over_the_window() -> None:
    r = fmt.RateWindow(window=60)
    for t in range(0, 301, 10):  # one frame every 10 s = 6 frames/min
        r.add(t, t // 10)
    assert r.rate_per_min(300) == pytest.approx(6.0)
    assert len(r._points) <= 8  # old points are dropped


def test_rate_falls_while_a_job_stalls() -> None:
    r = fmt.RateWindow(window=60)
    r.add(0, 0)
    r.add(60, 6)
    assert r.rate_per_min(60) == pytest.approx(6.0)
    assert r.rate_per_min(120) == pytest.approx(3.0)


def test_rate_restarts_after_requeue() -> None:
    r = fmt.RateWindow()
    r.add(0, 0)
    r.add(10, 5)
    r.add(20, 2)  # frames were requeued
    assert r.rate_per_min(20) is None


def test_eta() -> None:
    assert fmt.eta_seconds(0, None) == 0.0
    assert fmt.eta_seconds(10, None) is None
    assert fmt.eta_seconds(10, 0.0) is None
    assert fmt.eta_seconds(12, 6.0) == pytest.approx(120.0)


JOB = {"id": "j1", "name": "shot", "status": "active", "priority": 50, "frames_done": 12,
       "frames_total": 250, "tasks_failed": 0, "updated": 95.0, "error": None}


def test_progress_text() -> None:
    assert fmt.progress_text(JOB, 3.2) == (
        "12/250 frames    4.8%  3.2 frames/min  ETA 1h14m  active")
    assert fmt.progress_text({**JOB, "tasks_failed": 2}, None).endswith(
        "--  active  2 task(s) failed")
    assert "0/0 frames" in fmt.progress_text({"status": "queued"}, None)


def test_progress_counts_tiles_and_says_where_the_video_is() -> None:
    tiled = {**JOB, "frames_total": 1, "frames_done": 0, "tiles_total": 6, "tiles_done": 4,
             "video": True, "encode": "queued"}
    assert fmt.progress_text(tiled, None).startswith("0/1 frames  4/6 tiles  video queued")
    assert "video ready" in fmt.progress_text({**tiled, "encode": "done"}, None)


@given(st.integers(0, 300))
def test_progress_bar_line_fits(width: int) -> None:
    assert len(fmt.progress_bar_line(JOB, 3.2, width)) <= max(width, 0)


def test_progress_bar_line_has_a_bar_when_there_is_room() -> None:
    line = fmt.progress_bar_line({**JOB, "frames_done": 125}, 3.2, 120)
    assert line.startswith("[") and "125/250" in line


def test_the_server_s_eta_counts_the_parts_of_frames_being_rendered() -> None:
    from blenderfarm.server.eta import estimate_eta, job_progress

    assert estimate_eta(10, 0, 0.0, 30.0) is None  # nothing to go by yet
    assert estimate_eta(10, 0, 0.0, 0.0) is None
    assert estimate_eta(1, 0, 0.25, 10.0) == pytest.approx(30.0)  # one long frame, a quarter in
    assert estimate_eta(10, 4, 1.0, 50.0) == pytest.approx(50.0)  # 5 of 10 in 50 s
    assert estimate_eta(10, 10, 0.0, 50.0) == 0.0
    assert estimate_eta(10, 9, 5.0, 50.0) == 0.0  # more in flight than is left: done soon
    assert estimate_eta(10, 2, -1.0, 20.0) == pytest.approx(80.0)  # a bad part counts as none
    assert job_progress(4, 1, 0.5) == pytest.approx(0.375)
    assert job_progress(0, 0, 0.0) == 0.0 and job_progress(2, 2, 1.0) == 1.0


def test_a_task_s_fraction_becomes_the_part_of_its_current_frame() -> None:
    from blenderfarm.server.eta import InFrame

    parts = InFrame()
    parts.report("t1", 0.5, 1, 0)  # half of its one frame
    parts.report("t2", 0.7, 5, 3)  # a chunk of 5: 3 finished, half of the 4th
    assert parts.total() == pytest.approx(1.0)
    parts.report("t2", 1.0, 5, 5)  # all done: its frames count whole, elsewhere
    parts.drop("t1")
    assert parts.total() == 0.0


def test_bf_shows_the_server_s_eta_and_fraction_when_it_has_them() -> None:
    job = {**JOB, "frames_done": 0, "frames_total": 1, "progress": 0.25, "eta": 30.0}
    assert fmt.job_eta(job, None) == 30.0 and fmt.job_fraction(job) == 0.25
    assert fmt.progress_text(job, None) == "0/1 frames   25.0%  -- frames/min  ETA 30s  active"
    assert fmt.job_eta({**job, "eta": None}, 6.0) is None  # the server does not know yet
    assert fmt.job_eta(JOB, 6.0) == pytest.approx(2380.0)  # an older server: our own rate
    assert fmt.job_fraction(JOB) == pytest.approx(12 / 250)


def test_format_table() -> None:
    table = fmt.format_table(["ID", "NAME"], [["a", None], ["bbbb", "x"]])
    assert table.splitlines() == ["ID    NAME", "a     -", "bbbb  x"]


def test_job_row() -> None:
    assert fmt.job_row(JOB, 100.0) == ["j1", "shot", "active", 50, "12/250", 0, "5s ago"]


def test_cells_and_columns() -> None:
    assert fmt.cell([1, 2, 3, 7]) == "1-3,7"
    assert fmt.cell({"version": "3.4.1", "path": "/usr/bin/blender"}) == "3.4.1"
    assert fmt.cell(0.5) == "0.5"
    assert fmt.cell(["gpu", "fast"]) == "gpu,fast"
    items: list[dict[str, Any]] = [{"status": "done", "id": "t1"}, {"node": "n1"}]
    assert fmt.pick_columns(items, ["id", "kind", "status", "node"]) == ["id", "status", "node"]


def test_item_table() -> None:
    tasks = [{"id": "t1", "status": "done", "frames": [1, 2], "updated": 90.0, "error": None,
              "secret": "not shown"},
             {"id": "t2", "status": "failed", "frames": [3], "updated": 40.0, "error": "x" * 80}]
    lines = fmt.item_table(tasks, fmt.TASK_COLUMNS, now=100.0).splitlines()
    assert lines[0].split() == ["ID", "STATUS", "FRAMES", "UPDATED", "ERROR"]
    assert lines[1].split() == ["t1", "done", "1-2", "10s", "ago", "-"]
    assert lines[2].endswith("x" * 57 + "...")


# --- settings and the command line ---------------------------------------------------------


def test_settings_precedence() -> None:
    env = {"BLENDERFARM_SERVER": "http://env:1", "BLENDERFARM_TOKEN": "envtok"}
    config = {"server": "http://cfg:2", "token": "cfgtok"}
    assert resolve_settings("http://flag:3", "flagtok", env, config) == ("http://flag:3", "flagtok")
    assert resolve_settings(None, None, env, config) == ("http://env:1", "envtok")
    assert resolve_settings(None, None, {}, config) == ("http://cfg:2", "cfgtok")
    assert resolve_settings(None, None, {}, {}) == (DEFAULT_SERVER, None)


def test_common_options_go_before_or_after_the_command() -> None:
    parser = build_parser()
    a = parser.parse_args(["--json", "--server", "http://s:1", "jobs"])
    b = parser.parse_args(["jobs", "--json", "--server", "http://s:1"])
    assert (a.json, a.server) == (b.json, b.server) == (True, "http://s:1")
    s = parser.parse_args(["submit", "x.blend", "--format", "open_exr", "--no-denoise"])
    assert (s.format, s.no_denoise, s.chunk, s.priority) == ("OPEN_EXR", True, 1, 50)


def test_client_url_forms() -> None:
    assert Client("127.0.0.1:8765/").server_url == "http://127.0.0.1:8765"
    assert Client("https://farm.example/base").server_url == "https://farm.example/base"
    with pytest.raises(ValueError):
        Client("ftp://farm")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_server_is_one_clear_error() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(ServerUnreachable) as info:
        Client(url, timeout=2).info()
    assert "Is bf-server running?" in str(info.value) and info.value.url == url


def test_cli_exit_codes(capsys: pytest.CaptureFixture[str], tmp_path: Any) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    assert main(["jobs", "--server", url]) == EXIT_UNREACHABLE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "BLENDERFARM_SERVER" in err and "Traceback" not in err
    assert main(["submit", str(tmp_path / "x.blend"), "--server", url]) == 1
    assert "No such .blend" in capsys.readouterr().err
    (tmp_path / "x.blend").write_bytes(b"junk")
    assert main(["submit", str(tmp_path / "x.blend"), "--frames", "9-1", "--server", url,
                 "--json"]) == EXIT_USAGE
    out = capsys.readouterr().out
    assert '"invalid_frames"' in out
    # an empty frame list is a mistake, not "the scene's whole range"
    assert main(["submit", str(tmp_path / "x.blend"), "--frames", "", "--server", url,
                 "--json"]) == EXIT_USAGE
    assert '"invalid_frames"' in capsys.readouterr().out


def test_api_error_text() -> None:
    e = ApiError("priority must be between 0 and 100", 400, "invalid_spec", "priority")
    assert str(e) == "priority must be between 0 and 100 (priority)"


def test_bf_nodes_rows_say_what_each_node_does() -> None:
    base = {"online": True, "blender": "3.4.1", "threads": 8, "gpus": [], "tags": ["gpu", "big"],
            "last_seen": 995.0, "frames_rendered": 40, "tasks": []}
    current = {"task_id": "t1", "job_id": "j1", "job_name": "shot010", "status": "running",
               "frame": 12, "progress": 0.4}
    nodes = [
        {**base, "id": "aaaa1111bbbb", "name": "render-01", "state": "rendering", "tasks": ["t1"],
         "current": current},
        {**base, "id": "cccc2222dddd", "name": "render-02", "state": "idle", "current": None},
        {**base, "id": "eeee3333ffff", "name": "render-03", "state": "drained", "tasks": ["t2"],
         "current": {**current, "frame": None, "job_name": "shot020"}},
        {**base, "id": "111122223333", "name": "render-04", "state": "drained"},
        {**base, "id": "444455556666", "name": "render-05", "state": "disabled"},
        {**base, "id": "777788889999", "name": "render-05", "state": "offline", "online": False},
        {"id": "000011112222", "name": "old-server", "state": "rendering", "tasks": ["t3"]},
    ]
    lines = fmt.format_table(fmt.NODE_HEADERS, fmt.node_rows(nodes, now=1000.0)).splitlines()
    assert lines[0].split()[:6] == ["NAME", "STATE", "SLOTS", "BLENDERS", "DEVICES", "TAGS"]
    assert "LAST SEEN" in lines[0]
    # a server from before slots: one slot, busy while it renders; its one Blender
    assert " 1/1 " in lines[1] and " 0/1 " in lines[2] and " 3.4.1 " in lines[1]
    assert fmt.node_devices({"ffmpeg": "5.1.6"}) == "CPU, FFmpeg"  # it takes video encodes
    states = [fmt.node_state(n) for n in nodes]
    assert states == ["rendering shot010 frame 12", "idle", "draining (shot020)", "drained",
                      "disabled", "offline", "rendering"]
    assert lines[1].startswith("render-01  ") and "rendering shot010 frame 12" in lines[1]
    assert "5s ago" in lines[1] and "gpu,big" in lines[1] and "aaaa1111" not in "".join(lines)
    # two nodes of one name: the start of the id tells them apart
    assert lines[5].startswith("render-05 (44445555)") and lines[6].startswith(
        "render-05 (77778888)")
