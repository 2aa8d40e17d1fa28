"""Every code folder is installed: a subpackage missing from setup.cfg works in an editable
install and breaks in a real one."""

from __future__ import annotations

import configparser

from tests.support.paths import REPO

ROOT = REPO


def test_every_package_folder_is_listed_in_setup_cfg() -> None:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    mapping = dict(
        line.split(" = ") for line in config["options"]["package_dir"].strip().splitlines()
    )
    found = set()
    for package, folder in mapping.items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            relative = init.parent.relative_to(base).parts
            found.add(".".join((package, *relative)))
    assert found <= listed, f"not installed: {sorted(found - listed)}"
