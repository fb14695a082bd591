"""Every path in the text report: relative to the working folder when under it, absolute otherwise."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cc_testing import convcheck

from convcheck.paths import display_loc, display_path, display_paths_in
from convcheck.findings import Location

TRAIN = """\
import sys
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
model = nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x, y = torch.randn(32, 4), torch.randn(32)
for step in range(6):
    loss = F.mse_loss(model(x), y)  # [32, 1] against [32]
    loss.backward()  # and no zero_grad()
    opt.step()
with open(sys.argv[1], "w") as fh:
    fh.write("outside the working folder\\n")
with open("notes.txt", "w") as fh:
    fh.write("inside the working folder\\n")
"""


def test_display_path_is_relative_under_the_folder_and_absolute_elsewhere(tmp_path: Path) -> None:
    here = tmp_path / "proj"
    (here / "sub").mkdir(parents=True)
    assert display_path(here / "sub" / "train.py", here) == "sub/train.py"
    assert display_path("sub/train.py", here) == "sub/train.py"
    assert display_path(here, here) == "."
    assert display_path("../data/x.pt", here) == str(tmp_path / "data" / "x.pt")
    assert display_path(tmp_path / "projects" / "x.py", here) == str(tmp_path / "projects" / "x.py")  # a mere prefix
    assert display_path("<stdin>", here) == "<stdin>"
    assert display_loc([str(here / "train.py"), 7], here) == "train.py:7"
    assert display_loc(Location(path="/elsewhere/t.py", line=3), here) == "/elsewhere/t.py:3"
    assert display_loc(None, here) == "?"


def test_paths_inside_free_text_follow_the_same_rule(tmp_path: Path) -> None:
    here = tmp_path / "proj"
    text = (f'File "{here}/sub/train.py", line 3, in <module>; saved {here}/ckpt.pt, read ../data/x.pt '
            f"and /usr/lib/python3/x.py; see https://pytorch.org/docs/a/b; loss / 2; x /2; a/b.")
    assert display_paths_in(text, here) == (
        f'File "sub/train.py", line 3, in <module>; saved ckpt.pt, read {tmp_path}/data/x.pt '
        f"and /usr/lib/python3/x.py; see https://pytorch.org/docs/a/b; loss / 2; x /2; a/b."
    )


@pytest.mark.parametrize("where", ["inside", "outside"])
def test_a_text_report_never_mixes_relative_and_absolute_paths(tmp_path: Path, where: str) -> None:
    project, elsewhere = tmp_path / "proj", tmp_path / "elsewhere"
    (project / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    script = project / "sub" / "train.py"
    script.write_text(TRAIN)
    outside = elsewhere / "log.txt" if where == "inside" else project / "log.txt"
    cwd = project if where == "inside" else elsewhere
    result = convcheck("run", "--fail-on", "never", "--steps", "20", script, outside, cwd=cwd,
                       env={"COLUMNS": "400"})
    assert result.code == 0, result.stdout + result.stderr
    text = result.stdout
    assert str(cwd) + "/" not in text
    shown = "sub/train.py" if where == "inside" else str(script)
    assert text.startswith(f"convcheck {shown} · ")
    assert f" ERROR   CC008 grads-not-zeroed  {shown}:12  [runtime]" in text
    assert f"`backward()` at {shown}:12 added to gradients" in text
    assert f" ERROR   CC012 loss-not-decreasing  {shown}:11  [runtime]" in text
    assert f"  created: {outside}  ({shown}:14)" in text
    assert f"  created: notes.txt  ({shown}:16)" in text
    # Whatever path is left is absolute and outside the working folder.
    for path in re.findall(r"(?<![\w.])/[\w./-]+", text):
        assert not path.startswith(str(cwd) + "/"), path


def test_fix_state_dict_names_files_under_the_working_folder_relative(tmp_path: Path) -> None:
    import torch
    import torch.nn as nn

    project = tmp_path / "proj"
    (project / "ckpt").mkdir(parents=True)
    source = project / "ckpt" / "ddp.pth"
    torch.save(nn.DataParallel(nn.Linear(3, 2)).state_dict(), source)
    outside = tmp_path / "fixed.pth"
    result = convcheck("fix-state-dict", source, "--output", outside, cwd=project, env={"COLUMNS": "400"})
    assert result.code == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ckpt/ddp.pth  (")
    assert f"wrote {outside}: verified" in result.stdout
