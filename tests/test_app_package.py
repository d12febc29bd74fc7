"""What `flwr run` ships (the FAB): the two apps and the package, never the committed results."""

from __future__ import annotations

import subprocess
import zipfile

from conftest import ROOT

from hasa_flwr.study.processes import BIN


def test_fab_holds_only_the_apps_and_the_package(tmp_path):
    out = subprocess.run([str(BIN / "flwr"), "build", "--app", str(ROOT)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    fab, = tmp_path.glob("*.fab")
    names = zipfile.ZipFile(fab).namelist()
    assert {"server_app.py", "client_app.py", "pyproject.toml", "hasa_flwr/federation/client.py"} <= set(names)
    stray = [n for n in names if not (n.startswith(("hasa_flwr/", ".info/"))
                                      or n in ("server_app.py", "client_app.py", "pyproject.toml"))]
    assert stray == []
    assert fab.stat().st_size < 1_000_000   # Flower refuses FABs over 10 MB; results would grow it


def test_sweep_snapshot_ships_the_same_package(tmp_path):
    """A sweep runs every job from one unpacked copy of the FAB (Flower's CLI walks the whole app
    folder, a virtual environment included, on every `flwr run`): the copy must build the same FAB."""
    import io

    from flwr.cli.build import build_fab_from_disk

    from hasa_flwr.study.launch import app_snapshot

    def manifest(fab: bytes) -> str:
        return zipfile.ZipFile(io.BytesIO(fab)).read(".info/CONTENT").decode()

    snapshot = app_snapshot(ROOT, tmp_path / "app")
    assert sorted(p.name for p in snapshot.iterdir()) == ["client_app.py", "hasa_flwr", "pyproject.toml", "server_app.py"]
    assert manifest(build_fab_from_disk(snapshot)) == manifest(build_fab_from_disk(ROOT))
