"""What every agent needs to know about this bus instance: settings, registry, topic names."""

from __future__ import annotations

from dataclasses import dataclass

from schemas.org import Registry, load_registry
from stixbus.kafka.topics import TopicNames
from stixbus.secret_files import pseudonym_key
from stixbus.settings import Settings


@dataclass(frozen=True)
class BusContext:
    settings: Settings
    registry: Registry
    names: TopicNames

    @classmethod
    def from_settings(cls, settings: Settings) -> BusContext:
        return cls(
            settings=settings,
            registry=load_registry(settings.registry_path).with_pseudonym_key(
                pseudonym_key(settings)
            ),
            names=TopicNames(settings.topic_prefix),
        )
