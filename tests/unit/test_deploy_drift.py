"""The committed ``deploy/`` tree is exactly what ``shoal deploy`` makes of the shop's spec."""

from __future__ import annotations

from pathlib import Path

from shoal.platform.deploy import generate
from shoal.platform.spec import load_spec

SHOP = "examples/shop/shoal.yaml"
COMMITTED = Path("deploy")
REGENERATE = f"python -m shoal.platform.deploy {SHOP} all -o deploy"


def test_committed_deploy_tree_matches_a_fresh_generation(tmp_path):
    fresh = tmp_path / "deploy"
    generate(load_spec(SHOP), "all", fresh, SHOP, project_root=tmp_path)
    expected = {p.relative_to(fresh).as_posix(): p.read_bytes()
                for p in fresh.rglob("*") if p.is_file()}
    committed = {p.relative_to(COMMITTED).as_posix(): p.read_bytes()
                 for p in COMMITTED.rglob("*") if p.is_file()}
    missing = sorted(expected.keys() - committed.keys())
    extra = sorted(committed.keys() - expected.keys())
    changed = sorted(k for k in expected.keys() & committed.keys() if expected[k] != committed[k])
    drift = {"missing": missing, "not generated": extra, "changed": changed}
    assert drift == {"missing": [], "not generated": [], "changed": []}, (
        f"deploy/ drifted from {SHOP}; regenerate with `{REGENERATE}`")

