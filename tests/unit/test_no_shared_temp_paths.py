"""No fixed paths in the shared temp directory: the tiny CLIP config is registered without writing a file,
so a symlink planted where an older version wrote it (``$TMPDIR/adray-open-clip-configs-<uid>``) is never
followed; and no module of adray names a fixed folder under the temp directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_REGISTER = """
import open_clip
from adray.backbones.open_clip import TINY_CLIP, load_clip, register_tiny_clip
assert register_tiny_clip() == TINY_CLIP and TINY_CLIP in open_clip.list_models()
clip = load_clip(TINY_CLIP, "random", device="cpu")
print("ok", sum(p.numel() for p in clip.model.parameters()) > 0)
"""


def test_a_symlink_planted_at_the_old_config_folder_is_not_followed(tmp_path):
    shared_tmp = tmp_path / "tmp"
    victim = tmp_path / "victim"
    shared_tmp.mkdir()
    victim.mkdir()
    planted = shared_tmp / f"adray-open-clip-configs-{os.getuid()}"
    planted.symlink_to(victim)
    env = dict(os.environ, TMPDIR=str(shared_tmp))
    proc = subprocess.run(
        [sys.executable, "-c", _REGISTER], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["ok", "True"]
    assert list(victim.iterdir()) == []  # nothing written through the link
    assert [p.name for p in shared_tmp.iterdir() if p.name.startswith("adray")] == [planted.name]


def test_no_fixed_folder_under_the_temp_directory_in_adray():
    fixed = re.compile(r"gettempdir\(\)|[\"']/tmp/")
    offenders = []
    for path in sorted((ROOT / "adray").rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if fixed.search(code) and ">>>" not in code and "python -m" not in code:
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []
