"""@chute/uploader as a package: its typed example checks with tsc, and what `npm pack`
makes installs in a fresh folder, offline, and type-checks there.

tests/js/declarations.test.mjs holds the declarations to the module's exports; here tsc
holds a typed program to the declarations, inside the repo and after packing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.web.conftest import PACKAGE, TYPESCRIPT, run, tool

# A program that misuses the uploader: the declarations must make tsc refuse it.
MISUSE = """\
import { Uploader } from "@chute/uploader";
declare const file: File;
new Uploader(file, 7, { headers: () => "Bearer abc" });
"""


def pack(into: Path) -> tuple[Path, list[str]]:
    """`npm pack` of the package: the tarball and the paths it holds."""
    result = run("npm", "pack", "--json", "--pack-destination", into, cwd=PACKAGE)
    assert result.returncode == 0, result.stderr
    (packed,) = json.loads(result.stdout)
    return into / packed["filename"], sorted(f["path"] for f in packed["files"])


def tsc(project: Path) -> str:
    """tsc --noEmit on `project`; its report, empty when the program checks."""
    result = run(tool(TYPESCRIPT, "tsc"), "--noEmit", "-p", project, cwd=project)
    return (result.stdout + result.stderr).strip() if result.returncode else ""


def test_the_typed_example_checks_against_the_declarations() -> None:
    assert tsc(TYPESCRIPT) == ""


def test_the_packed_package_holds_the_module_and_its_types_and_nothing_else(
    tmp_path: Path,
) -> None:
    tarball, files = pack(tmp_path)
    assert tarball.name == "chute-uploader-0.1.0.tgz"
    # Not the page's own scripts, styles or HTML, which share the folder.
    assert files == ["package.json", "uploader.d.ts", "uploader.js"]
    manifest = json.loads((PACKAGE / "package.json").read_text())
    assert manifest["type"] == "module"
    assert "dependencies" not in manifest
    # The package's module is the file Chute's page imports, not a copy.
    assert manifest["exports"]["."] == {"types": "./uploader.d.ts", "import": "./uploader.js"}
    assert 'from "./uploader.js";' in (PACKAGE / "app.js").read_text()


def test_the_packed_package_installs_offline_and_type_checks_in_a_fresh_folder(
    tmp_path: Path,
) -> None:
    tarball, _ = pack(tmp_path)
    app = tmp_path / "app"
    app.mkdir()
    (app / "package.json").write_text(
        json.dumps({"name": "an-application", "private": True, "type": "module"})
    )
    installed = run(
        "npm", "install", "--offline", "--no-audit", "--no-fund", tarball, cwd=app, timeout=60
    )
    assert installed.returncode == 0, installed.stderr
    module = app / "node_modules" / "@chute" / "uploader" / "uploader.js"
    assert not module.parent.is_symlink(), "a copy, as from a registry, not a link to the repo"
    assert module.read_bytes() == (PACKAGE / "uploader.js").read_bytes()
    assert json.loads((app / "package.json").read_text())["dependencies"] == {
        "@chute/uploader": f"file:../{tarball.name}"
    }

    for name in ("typed.ts", "tsconfig.json"):
        shutil.copy(TYPESCRIPT / name, app / name)
    assert tsc(app) == ""
    # As a bundler (Vite, webpack) resolves it, too.
    bundler = app / "bundler"
    bundler.mkdir()
    (bundler / "tsconfig.json").write_text(
        json.dumps(
            {
                "extends": "../tsconfig.json",
                "compilerOptions": {"module": "esnext", "moduleResolution": "bundler"},
                "files": ["../typed.ts"],
            }
        )
    )
    assert tsc(bundler) == ""

    # The types are the installed package's: a misuse is refused there too.
    (app / "typed.ts").write_text(MISUSE)
    report = tsc(app)
    assert "typed.ts(3," in report and "error TS2322" in report, report

    # Node resolves the package by its exports, and nothing else of the folder.
    names = run(
        "node",
        "--input-type=module",
        "-e",
        "const m = await import('@chute/uploader'); console.log(Object.keys(m).sort().join(' '))",
        cwd=app,
    )
    assert names.returncode == 0, names.stderr
    assert "Uploader" in names.stdout.split() and "UploadMemory" in names.stdout.split()
    deep = run(
        "node", "--input-type=module", "-e", "await import('@chute/uploader/app.js')", cwd=app
    )
    assert deep.returncode != 0 and "ERR_PACKAGE_PATH_NOT_EXPORTED" in deep.stderr, deep.stderr
