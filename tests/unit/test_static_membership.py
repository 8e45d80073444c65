"""Static group membership settings (stixbus/settings.py) and the kept instance id
(stixbus/worker.py): the same home gives the same member id across restarts."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from stixbus.app import build_app
from stixbus.context import BusContext
from stixbus.settings import Settings
from stixbus.worker import INSTANCE_ID_FILE, instance_id


def test_instance_id_is_generated_once_and_kept_with_the_home(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "w1", app_id="stixbus")
    first = instance_id(settings)
    assert first.startswith("stixbus-") and instance_id(settings) == first
    assert (settings.worker_dir / INSTANCE_ID_FILE).read_text().strip() == first
    assert instance_id(Settings(home=tmp_path / "w2", app_id="stixbus")) != first
    assert instance_id(settings.model_copy(update={"group_instance_id": "pinned"})) == "pinned"


def test_heartbeat_must_fit_three_times_in_the_session() -> None:
    with pytest.raises(ValidationError, match="a third of session_timeout_seconds"):
        Settings(session_timeout_seconds=6, heartbeat_interval_seconds=3)


def test_faust_gets_the_member_id_and_the_session(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path, store="memory://", group_instance_id="w-1", session_timeout_seconds=30
    )
    conf = build_app(BusContext.from_settings(settings)).conf
    assert conf.consumer_group_instance_id == "w-1"
    assert conf.broker_session_timeout == 30 and conf.broker_heartbeat_interval == 2
    off = settings.model_copy(update={"static_membership": False})
    assert build_app(BusContext.from_settings(off)).conf.consumer_group_instance_id is None
