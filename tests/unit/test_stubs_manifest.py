"""function.toml parsing, runtime inference and the errors a person gets for bad bundles."""

from __future__ import annotations

from pathlib import Path

import pytest

from easyfaas.errors import ManifestError
from easyfaas.stubs import manifest


def bundle(tmp_path: Path, toml: str | None = None, files: dict[str, str] | None = None) -> Path:
    for name, text in (files or {"index.py": "def handler(e, c): return e\n"}).items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    if toml is not None:
        (tmp_path / "function.toml").write_text(toml)
    return tmp_path


def test_defaults_without_manifest(tmp_path: Path) -> None:
    config = manifest.load(bundle(tmp_path))
    assert config == {"runtime": "python3", "handler": "index.handler", "memory": 128,
                      "timeout": 3.0, "concurrency": 1, "max_instances": None, "env": {},
                      "http": []}


def test_full_manifest(tmp_path: Path) -> None:
    toml = """
runtime = "python3"
handler = "app.main"
memory = 256
timeout = 1.5
concurrency = 4
max_instances = 2
[env]
GREETING = "hi"
[[http]]
path = "/hi"
methods = ["get", "POST"]
[[http]]
path = "/all"
"""
    config = manifest.load(bundle(tmp_path, toml, {"app.py": "def main(e, c): pass\n"}))
    assert config["handler"] == "app.main"
    assert config["memory"] == 256 and config["timeout"] == 1.5
    assert config["concurrency"] == 4 and config["max_instances"] == 2
    assert config["env"] == {"GREETING": "hi"}
    assert config["http"][0] == {"path": "/hi", "methods": ["GET", "POST"]}
    assert config["http"][1]["methods"] == list(manifest.HTTP_METHODS)


@pytest.mark.parametrize("files,runtime,handler", [
    ({"handler.py": "x = 1\n"}, "python3", "handler.handler"),
    ({"index.js": "exports.handler = 1\n"}, "nodejs", "index.handler"),
])
def test_inference(tmp_path: Path, files: dict[str, str], runtime: str, handler: str) -> None:
    config = manifest.load(bundle(tmp_path, None, files))
    assert (config["runtime"], config["handler"]) == (runtime, handler)


def test_inference_shell_needs_executable_bootstrap(tmp_path: Path) -> None:
    bundle(tmp_path, None, {"bootstrap": "#!/bin/sh\ncat\n"})
    with pytest.raises(ManifestError, match="none can be inferred"):
        manifest.load(tmp_path)
    (tmp_path / "bootstrap").chmod(0o755)
    assert manifest.load(tmp_path)["runtime"] == "shell"


def test_unknown_key_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as info:
        manifest.load(bundle(tmp_path, "memroy = 128\n"))
    assert str(info.value) == ("function.toml: unknown key 'memroy' (known: concurrency, env, "
                               "handler, http, max_instances, memory, runtime, timeout)")
    assert info.value.detail == {"file": "function.toml", "key": "memroy"}


@pytest.mark.parametrize("toml,key,fragment", [
    ("memory = '128'\n", "memory", "must be an integer, got a string"),
    ("memory = 8\n", "memory", "between 16 and 4096"),
    ("memory = true\n", "memory", "must be an integer"),
    ("timeout = 0\n", "timeout", "> 0"),
    ("timeout = 1000\n", "timeout", "at most 900"),
    ("concurrency = 0\n", "concurrency", "between 1"),
    ("max_instances = 0\n", "max_instances", "between 1"),
    ("runtime = 'ruby'\n", "runtime", "not supported (supported: nodejs, python3, shell)"),
    ("handler = 'nodot'\n", "handler", "module.function"),
    ("[env]\n'1BAD' = 'x'\n", "env.1BAD", "not a valid variable name"),
    ("[env]\nN = 1\n", "env.N", "must be a string"),
    ("[env]\nEASYFAAS_X = 'y'\n", "env.EASYFAAS_X", "reserved"),
    ("[[http]]\npath = 'nope'\n", "http[0].path", "starting with '/'"),
    ("[[http]]\npath = '/x'\nmethods = ['FETCH']\n", "http[0].methods", "'FETCH'"),
    ("[[http]]\npath = '/x'\nverb = 'GET'\n", "http[0].verb", "unknown key"),
    ("http = '/x'\n", "http", "array of tables"),
])
def test_bad_values(tmp_path: Path, toml: str, key: str, fragment: str) -> None:
    with pytest.raises(ManifestError, match="^function.toml: ") as info:
        manifest.load(bundle(tmp_path, toml))
    assert fragment in str(info.value)
    assert info.value.detail["key"] == key


def test_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="function.toml: not valid TOML"):
        manifest.load(bundle(tmp_path, "memory = = 1\n"))


def test_missing_handler_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as info:
        manifest.load(bundle(tmp_path, "handler = 'app.main'\n"))
    assert "app.py: handler 'app.main' needs app.py or app/__init__.py" in str(info.value)
    assert info.value.detail["file"] == "app.py"


def test_package_handler_and_node_extensions(tmp_path: Path) -> None:
    files = {"pkg/mod/__init__.py": "", "lib/x.mjs": ""}
    config = manifest.load(bundle(tmp_path, "handler = 'pkg.mod.fn'\n", files))
    assert config["handler"] == "pkg.mod.fn"
    config = manifest.load(bundle(tmp_path, "runtime = 'nodejs'\nhandler = 'lib/x.fn'\n"))
    assert config["runtime"] == "nodejs"


def test_shell_ignores_handler(tmp_path: Path) -> None:
    bundle(tmp_path, "runtime = 'shell'\nhandler = 'whatever.x'\n", {"bootstrap": "#!/bin/sh\n"})
    with pytest.raises(ManifestError, match="executable file 'bootstrap'"):
        manifest.load(tmp_path)
    (tmp_path / "bootstrap").chmod(0o755)
    assert manifest.load(tmp_path)["handler"] == "bootstrap"
