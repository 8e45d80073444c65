"""The CLI's error contract: a StixbusError is one line and exit 1; anything else is a bug.

`stixbus.cli.main.main` is called as the entry point is (argv in, SystemExit out).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from stixbus.cli import main as cli_main
from stixbus.cli import messages
from stixbus.errors import ConfigError, NotFound, RejectedInput, StixbusError, UserError
from stixbus.settings import get_settings
from tests.helpers.bus import free_port
from tests.helpers.paths import DEPLOY, REPO_ROOT


@pytest.fixture(autouse=True)
def _settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.setenv("STIXBUS_DEPLOY_DIR", str(DEPLOY))
    monkeypatch.setenv("STIXBUS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("STIXBUS_DEBUG", raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def run_main(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["stixbus", *args])
    with pytest.raises(SystemExit) as exited:
        cli_main.main()
    code = exited.value.code
    return code if isinstance(code, int) else 1


def test_user_error_is_one_line_with_the_fix_and_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bundle = tmp_path / "b.json"
    bundle.write_text("{}")
    assert run_main(monkeypatch, "publish", "--as", "no-such-org", str(bundle)) == 1
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1, stderr  # one line, however long (no wrapping)
    assert stderr.startswith("stixbus: unknown org 'no-such-org' — use one the registry knows: ")
    assert "cert" in stderr
    assert "Traceback" not in stderr


def test_config_error_names_the_file(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    broken = tmp_path / "agreements.yaml"
    broken.write_text("agreements: [ {id: x\n")
    assert run_main(monkeypatch, "agreements", "check", str(broken)) == 1
    stderr = capsys.readouterr().err
    assert stderr.startswith(f"stixbus: agreements in {broken} are not valid YAML")
    assert " — fix the YAML syntax" in stderr
    assert "Traceback" not in stderr


def test_bad_setting_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STIXBUS_PARTITIONS", "many")
    assert run_main(monkeypatch, "settings") == 1
    stderr = capsys.readouterr().err
    assert stderr.startswith("stixbus: invalid settings: STIXBUS_PARTITIONS: ")
    assert "Traceback" not in stderr


def test_unexpected_exception_is_not_caught(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A bug (here: ZeroDivisionError inside a command) escapes main(), traceback and all."""

    def broken(path: object) -> object:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(messages, "load_registry", broken)
    monkeypatch.setattr(sys, "argv", ["stixbus", "publish", "--as", "cert", str(tmp_path)])
    with pytest.raises(ZeroDivisionError, match="a bug"):
        cli_main.main()


def test_unexpected_exception_prints_a_traceback(tmp_path: Path) -> None:
    """Through the interpreter, as a user would see it: a traceback and a non-zero exit."""
    script = (
        "import sys\n"
        "from stixbus.cli import main, messages\n"
        "def broken(path):\n"
        "    raise ZeroDivisionError('a bug')\n"
        "messages.load_registry = broken\n"
        "sys.argv = ['stixbus', 'publish', '--as', 'cert', 'x.json']\n"
        "main.main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "STIXBUS_HOME": str(tmp_path)},
    )
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr
    assert "ZeroDivisionError: a bug" in done.stderr
    assert "stixbus: " not in done.stderr


def test_error_tree() -> None:
    """The builtin bases stay, so code that caught ValueError/KeyError still does."""
    assert issubclass(ConfigError, UserError) and issubclass(ConfigError, ValueError)
    assert issubclass(NotFound, UserError) and issubclass(NotFound, KeyError)
    assert issubclass(RejectedInput, StixbusError) and issubclass(RejectedInput, ValueError)
    assert str(NotFound("unknown org 'x'", "use cert")) == "unknown org 'x' — use cert"
    assert str(ConfigError("bad file")) == f"bad file — {ConfigError.fix}"


def test_unreachable_broker_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()  # nobody there
    monkeypatch.setenv("STIXBUS_BOOTSTRAP_SERVERS", f"127.0.0.1:{port}")
    monkeypatch.setenv("STIXBUS_SECURITY_PROTOCOL", "PLAINTEXT")
    assert run_main(monkeypatch, "topics") == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        f"stixbus: cannot reach the Kafka broker at 127.0.0.1:{port} — start it (`stixbus up`) "
        "or point STIXBUS_BOOTSTRAP_SERVERS at it"
    ], lines  # and not aiokafka's own "Unable connect to ..." lines before it


@pytest.mark.parametrize("command", [["publish", "--as", "cert"], ["consume", "--as", "bank-a"]])
def test_unreachable_broker_publish_and_consume_leave_no_unclosed_client(
    tmp_path: Path, command: list[str]
) -> None:
    """Issue #17: the CLI printed a raw KafkaConnectionError plus "Unclosed AIOKafkaProducer"
    (the warning of a client whose failed start was never closed, printed at exit)."""
    bundle = tmp_path / "b.json"
    bundle.write_text('{"type": "bundle", "id": "bundle--00000000-0000-4000-8000-000000000000"}')
    args = [*command, str(bundle)] if command[0] == "publish" else command
    env = {
        "PATH": "/usr/bin:/bin",
        "STIXBUS_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "STIXBUS_SECURITY_PROTOCOL": "PLAINTEXT",
        "STIXBUS_HOME": str(tmp_path / "home"),
        "STIXBUS_DEPLOY_DIR": str(DEPLOY),
    }
    result = subprocess.run(
        [sys.executable, "-m", "stixbus.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stixbus: cannot reach the Kafka broker at"), (
        result.stderr
    )
