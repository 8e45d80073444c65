"""Traffic Light Protocol: one lattice for TLP 1.0, TLP 2.0 and known alias marking ids.

CLEAR(WHITE) < GREEN < AMBER < AMBER+STRICT < RED.  Anything not in MARKING_TLP is unknown, and
unknown markings fail closed everywhere in the bus.
"""

from __future__ import annotations

from enum import IntEnum


class TLP(IntEnum):
    CLEAR = 0
    GREEN = 1
    AMBER = 2
    AMBER_STRICT = 3
    RED = 4

    @property
    def label(self) -> str:
        return _LABELS[self]

    @property
    def marking_id(self) -> str:
        """The TLP 2.0 marking-definition id the bus writes on what it delivers."""
        return TLP2_MARKING_ID[self]

    @classmethod
    def parse(cls, text: str) -> TLP:
        """Accept clear, white, green, amber, amber+strict, red (any case; TLP: prefix ok)."""
        key = text.strip().lower().removeprefix("tlp:").replace("_", "+").replace(" ", "")
        try:
            return _BY_NAME[key]
        except KeyError:
            raise ValueError(
                f"unknown TLP {text!r}: use one of clear, white, green, amber, amber+strict, red"
            ) from None


_LABELS = {
    TLP.CLEAR: "CLEAR",
    TLP.GREEN: "GREEN",
    TLP.AMBER: "AMBER",
    TLP.AMBER_STRICT: "AMBER+STRICT",
    TLP.RED: "RED",
}

_BY_NAME = {
    "clear": TLP.CLEAR,
    "white": TLP.CLEAR,
    "green": TLP.GREEN,
    "amber": TLP.AMBER,
    "amber+strict": TLP.AMBER_STRICT,
    "red": TLP.RED,
}

TLP2_MARKING_ID: dict[TLP, str] = {
    TLP.CLEAR: "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487",
    TLP.GREEN: "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
    TLP.AMBER: "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
    TLP.AMBER_STRICT: "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003",
    TLP.RED: "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1",
}

TLP1_MARKING_ID: dict[TLP, str] = {
    TLP.CLEAR: "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9",
    TLP.GREEN: "marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da",
    TLP.AMBER: "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82",
    TLP.RED: "marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed",
}

# OpenCTI exports AMBER+STRICT under its own id (and CLEAR under the TLP 1.0 WHITE id).
OPENCTI_AMBER_STRICT_ID = "marking-definition--826578e1-40ad-459f-bc73-ede076f81f37"

MARKING_TLP: dict[str, TLP] = {
    **{mid: tlp for tlp, mid in TLP2_MARKING_ID.items()},
    **{mid: tlp for tlp, mid in TLP1_MARKING_ID.items()},
    OPENCTI_AMBER_STRICT_ID: TLP.AMBER_STRICT,
}


def tlp_of_marking(marking_id: str) -> TLP | None:
    """The TLP a marking id stands for, or None when the bus does not know it."""
    return MARKING_TLP.get(marking_id)
