"""Our top-level import names are ours alone (the wheel test: tests/integration/test_wheel.py)."""


from __future__ import annotations

import importlib.metadata

# Our top-level import names (pyproject.toml [tool.setuptools.packages.find]).  `agents`,
# `schemas` and `connectors` are generic names: another distribution providing one of them
# would shadow ours or be shadowed by it (README, "Layout").
OUR_TOP_LEVEL = ("stixbus", "agents", "schemas", "connectors", "egress")


def test_no_other_distribution_provides_our_top_level_packages() -> None:
    providers = importlib.metadata.packages_distributions()
    for name in OUR_TOP_LEVEL:
        assert set(providers.get(name, [])) == {"stixbus"}, (
            f"top-level package {name!r} is provided by {sorted(set(providers.get(name, [])))}; "
            "only the stixbus distribution may provide it (rename the clash, or move ours "
            "under stixbus/)"
        )

