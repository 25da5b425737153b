"""The ``easyfaas`` command line: parsing, config overrides, help text and error messages."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest

from easyfaas import cli, funclog


def parse(*argv: str) -> Any:
    return cli.build_parser().parse_args(list(argv))


def test_flags_override_config_file(tmp_path: Path) -> None:
    conf = tmp_path / "engine.toml"
    conf.write_text('[http]\nlisten = "0.0.0.0:9000"\n[api]\nlisten = "127.0.0.1:9001"\n')
    args = parse("ls", "--config", str(conf), "--api-listen", "127.0.0.1:7000",
                 "--state-dir", str(tmp_path / "s"))
    cfg = cli.load_config(args)
    assert cfg.http.listen == "0.0.0.0:9000"
    assert cfg.api.listen == "127.0.0.1:7000"
    assert cfg.state_dir == tmp_path / "s"
    assert cfg.run_dir == tmp_path / "s" / "run"


def test_config_args_are_passed_on_to_children(tmp_path: Path) -> None:
    args = parse("up", "--config", "a.toml", "--state-dir", "rel", "--http-listen", "")
    out = cli.config_args(args)
    assert out[:2] == ["--config", str(Path("a.toml").absolute())]
    assert out[2:] == ["--state-dir", str(Path("rel").absolute()), "--http-listen", ""]
    assert parse("serve", "httptrigger", *out).http_listen == ""


def test_bad_config_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "engine.toml"
    conf.write_text("[http]\nlisten = 5\n")
    assert cli.main(["token", "--config", str(conf)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "http.listen" in err and str(conf) in err


def test_unreachable_api_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["ls", "--state-dir", str(tmp_path), "--api-listen", "127.0.0.1:1"])
    assert rc == 1
    assert capsys.readouterr().err == (
        "easyfaas: error: cannot reach the engine API at 127.0.0.1:1 — is `easyfaas up` "
        "running?\n"
    )


def test_api_addr_file_wins_over_config(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "api.addr").write_text("127.0.0.1:4321\n")
    cfg = cli.load_config(parse("ls", "--state-dir", str(tmp_path)))
    assert cli.Api(cfg, None).addr == "127.0.0.1:4321"


def test_token_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("EASYFAAS_TOKEN", raising=False)
    args = parse("ls", "--state-dir", str(tmp_path))
    cfg = cli.load_config(args)
    assert cli.find_token(args, cfg) is None
    assert cli.main(["token", "--state-dir", str(tmp_path)]) == 1
    assert "no token at" in capsys.readouterr().err
    (tmp_path / "token").write_text("file-token\n")
    assert cli.find_token(args, cfg) == "file-token"
    monkeypatch.setenv("EASYFAAS_TOKEN", "env-token")
    assert cli.find_token(args, cfg) == "env-token"
    assert cli.find_token(parse("ls", "--token", "flag"), cfg) == "flag"
    assert cli.main(["token", "--state-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "file-token\n"


def test_zip_skips_dot_files_and_pycache(tmp_path: Path) -> None:
    (tmp_path / "index.py").write_text("def handler(e, c): return 1\n")
    (tmp_path / "function.toml").write_text('runtime = "python3"\n')
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "util.py").write_text("")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "index.pyc").write_text("")
    (tmp_path / ".index.py.swp").write_text("")
    names = zipfile.ZipFile(io.BytesIO(cli.zip_dir(tmp_path))).namelist()
    assert sorted(names) == ["function.toml", "index.py", "lib/util.py"]


def test_ls_table_shows_errors() -> None:
    functions = [
        {"Configuration": {"FunctionName": "hello", "Version": "3", "Runtime": "python3",
                           "MemorySize": 128, "State": "active"}, "LastError": None},
        {"Configuration": {"FunctionName": "broken", "Version": None, "Runtime": None,
                           "MemorySize": None, "State": "failed"},
         "LastError": {"message": "function.toml: unknown key 'memroy'"}},
    ]
    lines = cli.format_table(functions).splitlines()
    assert lines[0].split() == ["NAME", "VERSION", "RUNTIME", "MEMORY", "STATE", "ERROR"]
    assert lines[1].split()[:5] == ["broken", "-", "-", "-", "failed"]
    assert lines[1].endswith("function.toml: unknown key 'memroy'")
    assert lines[2].split() == ["hello", "3", "python3", "128MB", "active"]


def test_api_error_formats_easyfaas_body() -> None:
    body = json.dumps({"Code": "ResourceNotFoundException", "Message": "no fn x"}).encode()
    assert cli.api_error(404, body) == "no fn x (ResourceNotFoundException, HTTP 404)"
    assert cli.api_error(500, b"oops") == "HTTP 500: oops"


def test_read_data(tmp_path: Path) -> None:
    (tmp_path / "ev.json").write_bytes(b'{"a": 1}')
    assert cli.read_data(f"@{tmp_path}/ev.json") == b'{"a": 1}'
    assert cli.read_data('{"b": 2}') == b'{"b": 2}'
    with pytest.raises(cli.CliError, match="cannot read"):
        cli.read_data(f"@{tmp_path}/missing.json")


def test_up_needs_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert cli.main(["up", "--state-dir", str(tmp_path / "s")]) == 1
    assert "must run as root" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for command in ("up", "serve", "invoke", "ls", "logs", "deploy", "token", "status"):
        assert f"\n    {command} " in out


def test_serve_rejects_unknown_component(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["serve", "nope"])
    assert e.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_logs_prints_the_tail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    funclog.append(tmp_path, "hello", "one\ntwo\nthree")
    assert cli.main(["logs", "hello", "-n", "2", "--state-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "two\nthree\n"
