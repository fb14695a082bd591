"""The kernel-level layer on its own: which folders it overlays, and that a process that joins it
changes nothing outside (a shell, which no Python-level guard sees)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from convcheck.runtime import sandbox

REASON = sandbox.probe_available()
needs_kernel_layer = pytest.mark.skipif(REASON is not None, reason=f"no kernel-level layer: {REASON}")


def test_roots_are_existing_outermost_folders_that_do_not_hold_the_layer(tmp_path: Path) -> None:
    (tmp_path / "proj" / "sub").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    layer = tmp_path / "layer"

    roots = sandbox.plan_roots(
        [str(tmp_path / "proj" / "sub"), str(tmp_path / "proj"), str(tmp_path / "missing"), str(tmp_path / "other"),
         str(tmp_path), "/", "/proc/self"],
        keep_out=[str(layer)],
    )

    assert roots == [str(tmp_path / "other"), str(tmp_path / "proj")]


def test_path_arguments_name_existing_folders(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "out").mkdir()

    found = sandbox.path_arguments(
        ["--data", "data", "--save=out/model.pt", "--lr", "0.1", "--name", "nothing", "/nowhere/x"], str(tmp_path))

    assert [os.path.relpath(f, tmp_path) for f in found] == ["data", "out"]


def test_mountinfo_paths_are_unescaped() -> None:
    mounts = sandbox.read_mounts(
        "36 35 98:0 / /mnt/my\\040disk rw,noatime master:1 - ext4 /dev/sda1 rw,errors=continue\n"
        "22 27 0:21 / /proc rw,relatime - proc proc rw\n")

    assert [(m.path, m.fstype) for m in mounts] == [("/mnt/my disk", "ext4"), ("/proc", "proc")]


@needs_kernel_layer
def test_a_shell_in_the_layer_changes_nothing_and_every_change_is_listed(tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "keep.txt").write_text("mine\n")
    (proj / "gone.txt").write_text("mine too\n")
    layer = sandbox.build(tmp_path / "layer", [str(proj)])
    try:
        seen = subprocess.run(
            ["sh", "-c", "echo theirs > keep.txt; rm gone.txt; mkdir new; echo x > new/f; cat keep.txt; ls"],
            cwd=proj, preexec_fn=layer.join(str(proj)), capture_output=True, text=True, check=True,
        ).stdout
    finally:
        layer.close()

    assert seen == "theirs\nkeep.txt\nnew\n"  # inside, the changes are real
    assert sorted(p.name for p in proj.iterdir()) == ["gone.txt", "keep.txt"]
    assert (proj / "keep.txt").read_text() == "mine\n"
    assert sorted((row["op"], os.path.relpath(row["path"], proj)) for row in layer.changes()) == [
        ("create", "new/f"), ("delete", "gone.txt"), ("mkdir", "new"), ("write", "keep.txt")]
    sandbox.remove(layer.layer_dir)
    assert not layer.layer_dir.exists()


@needs_kernel_layer
def test_every_process_of_the_layer_is_found_by_its_namespace(tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()
    layer = sandbox.build(tmp_path / "layer", [str(proj)])
    child = subprocess.Popen(["sleep", "60"], cwd=proj, preexec_fn=layer.join(str(proj)), env={})
    try:
        assert sandbox.members(layer.ns_inode) == [child.pid]
        assert sandbox.processes_of(tmp_path) == [child.pid]
        assert sandbox.processes_of(tmp_path / "elsewhere") == []
    finally:
        child.kill()
        child.wait()
        layer.close()
        sandbox.remove(layer.layer_dir)
